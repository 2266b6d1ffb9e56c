"""``mdmctl runs``: a thin layer over ``mdmctl.run_summary.find_runs``."""

from __future__ import annotations

import json
import time
from dataclasses import asdict
from pathlib import Path

import typer

from mdmctl.cli.common import app, cli_errors, json_option


@app.command("runs")
def runs_cmd(
    root: Path = typer.Argument(Path("runs"), help="Folder holding run folders."),
    json_out: bool = json_option("Print the runs as JSON on stdout."),
) -> None:
    """List training runs: objective, size, steps, best validation loss, newest checkpoint."""
    with cli_errors():
        from rich.table import Table

        from mdmctl.log import results_console
        from mdmctl.run_summary import find_runs

        runs = find_runs(root)
        if json_out:
            print(json.dumps([asdict(r) for r in runs], indent=2))
            return
        if not runs:
            results_console().print(f"no runs under {root}")
            return
        t = Table(title=f"runs under {root} (newest first)")
        for col in ("run", "kind", "objective", "size", "N", "steps", "best val (step)",
                    "newest checkpoint", "updated"):  # fmt: skip
            t.add_column(col)
        for r in runs:
            steps = f"{r.steps_done:,}" + (f"/{r.steps_total:,}" if r.steps_total else "")
            best = "" if r.best_val_loss is None else f"{r.best_val_loss:.4f} ({r.best_val_step})"
            n = "" if r.n_params_non_embedding is None else f"{r.n_params_non_embedding / 1e6:.2f}M"
            ckpt = Path(r.newest_checkpoint).name if r.newest_checkpoint else "none"
            when = time.strftime("%Y-%m-%d %H:%M", time.localtime(r.updated))
            t.add_row(r.path, r.kind, r.objective, r.size, n, steps, best, ckpt, when)
        results_console().print(t)
