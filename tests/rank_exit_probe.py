"""``mdmctl`` as a torchrun worker that also records its own exit status.

torchrun does not report the exit codes of workers it stopped itself (on SIGTERM it raises in the
launcher and exits 1), so the SIGTERM test runs the CLI through this script:
``torchrun ... tests/rank_exit_probe.py pretrain ...`` writes ``$MDMCTL_EXIT_DIR/rank<R>`` with the
code the worker exits with. Not a test module (no ``test_`` prefix).
"""

from __future__ import annotations

import os
from pathlib import Path

from mdmctl.cli import main

if __name__ == "__main__":
    try:
        main()
    except SystemExit as e:  # Typer/Click end every run with sys.exit(code)
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        Path(os.environ["MDMCTL_EXIT_DIR"], f"rank{os.environ['RANK']}").write_text(str(code))
        raise
