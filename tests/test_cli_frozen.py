"""The command line's surface, frozen: every command's options with their flags, help, default
and range (``cli_options.json``). A change here is deliberate: regenerate the file with
``python -c "import json, tests.test_cli_frozen as t; t.write()"`` and review its diff."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer

FROZEN = Path(__file__).with_name("cli_options.json")


def snapshot() -> dict[str, dict[str, Any]]:
    """{command path: {option: "flags | default | range | help"}} for every command."""
    from mdmctl.cli import app

    out: dict[str, dict[str, Any]] = {}

    def walk(cmd: Any, path: list[str]) -> None:
        opts = {}
        for p in cmd.params:
            # Range: on the option (Typer's own click) or on its type (click's IntRange).
            rng = [
                getattr(p, k, getattr(getattr(p, "type", None), k, None)) for k in ("min", "max")
            ]
            default = p.default.value if hasattr(p.default, "value") else p.default
            flags = " ".join(sorted(p.opts + p.secondary_opts))
            opts[p.name] = f"{flags} | default {default!r} | range {rng} | {p.help}"
        out[" ".join(path) or "mdmctl"] = opts
        for name, sub in sorted((getattr(cmd, "commands", None) or {}).items()):
            walk(sub, [*path, name])

    walk(typer.main.get_command(app), [])
    return out


def write() -> None:
    FROZEN.write_text(json.dumps(snapshot(), indent=1, sort_keys=True) + "\n")


def test_options_help_and_defaults_are_frozen():
    frozen = json.loads(FROZEN.read_text())
    now = snapshot()
    assert sorted(now) == sorted(frozen), "commands added or removed"
    changed = [
        f"{cmd} {opt}: {frozen[cmd].get(opt)} -> {now[cmd].get(opt)}"
        for cmd in frozen
        for opt in sorted(set(frozen[cmd]) | set(now[cmd]))
        if frozen[cmd].get(opt) != now[cmd].get(opt)
    ]
    assert not changed, "options changed (regenerate cli_options.json if meant):\n" + "\n".join(
        changed
    )
