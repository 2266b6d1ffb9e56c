"""``mdmctl eval <task>`` for each zero-shot benchmark, and ``mdmctl eval all``: thin layers
over ``mdmctl.evaluation.zero_shot.evaluate_tasks``."""

from __future__ import annotations

import json
from enum import Enum
from pathlib import Path
from typing import Any

import typer

from mdmctl.cli.common import (
    Attention,
    attention_option,
    canonical_name,
    checkpoint_option,
    cli_errors,
    device_option,
    eval_app,
    finite_option,
    json_option,
    log_info,
    seed_option,
)
from mdmctl.errors import ConfigError
from mdmctl.progress import library_progress


def _render_zero_shot(results: list[Any], json_out: bool) -> None:
    from rich.table import Table

    from mdmctl.log import console, results_console

    if json_out:
        print(json.dumps([r.to_dict() for r in results], indent=2))
        return
    t = Table(title="zero-shot")
    for col in ("task", "n", "metric", "value", "estimator", "cfg", "requests/s"):
        t.add_column(col)
    for r in results:
        est = r.estimator + (f" x{r.mc_samples}" if r.mc_samples else "")
        for i, (m, v) in enumerate(r.metrics.items()):
            bound = " (bound)" if m == "perplexity" and r.estimator == "mc" else ""
            t.add_row(
                r.task if i == 0 else "",
                str(r.n) if i == 0 else "",
                m + bound,
                f"{v:.4g} ± {r.stderr[m]:.2g}"
                if m == "perplexity"
                else f"{v:.4f} ± {r.stderr[m]:.4f}",
                est if i == 0 else "",
                f"{r.cfg:g}" if i == 0 else "",
                f"{r.requests_per_s:.1f}" if i == 0 else "",
            )
    results_console().print(t)
    for r in results:
        if r.truncated:
            console.print(
                f"{r.task}: {r.truncated} of {r.requests} requests cut on the left to fit the "
                "model's context",
                highlight=False,
            )


def _zero_shot(names: list[str], opts: dict[str, Any], out: Path | None, json_out: bool) -> None:
    with cli_errors(), library_progress():
        from mdmctl.evaluation.zero_shot import ZeroShotConfig, evaluate_tasks

        cfg = ZeroShotConfig(
            checkpoint=str(opts["checkpoint"]) if opts["checkpoint"] else None,
            data=opts["data"],
            limit=opts["limit"],
            estimator=opts["estimator"].value if opts["estimator"] else None,
            mc_samples=opts["mc_samples"],
            cfg=opts["cfg"],
            batch_size=opts["batch_size"],
            seed=opts["seed"],
            device=opts["device"],
            attention=opts["attention"].value,
        )
        results = evaluate_tasks(names, cfg, out=str(out) if out else None, log=log_info)
        _render_zero_shot(results, json_out)
        if out:
            log_info(f"wrote {out}")


class EstimatorName(str, Enum):
    mc = "mc"
    chain_rule = "chain-rule"


MC_SAMPLES_HELP = "MDM mc: stratified t samples per request."
BATCH_HELP = "Rows per forward."
SEED_HELP = "Seed of the MDM's Monte Carlo draws."
JSON_HELP = "Print the results as JSON on stdout."


def _zero_shot_command(name: str, help_text: str, task: Any) -> None:
    def command(
        checkpoint: Path | None = checkpoint_option(),
        data: str | None = typer.Option(
            None,
            "--data",
            help="Task jsonl in lm-eval's formatting (../shared/data/benchmarks layout) or its "
            f"folder. Default: the hub's {task.hub[0]}, as lm-eval loads it (online only).",
        ),
        limit: int | None = typer.Option(
            None, "--limit", min=1, help="First N documents. Default: all."
        ),
        estimator: EstimatorName | None = typer.Option(
            None,
            "--estimator",
            help=f"MDM: mc or chain-rule (ARM checkpoints: exact). Default: {task.estimator} "
            "(the paper's).",
        ),
        mc_samples: int = typer.Option(
            128, "--mc-samples", "--mc-num", min=1, help=MC_SAMPLES_HELP
        ),
        cfg: float | None = typer.Option(
            None,
            "--cfg",
            help=f"MDM unsupervised CFG scale (ARM checkpoints: none). Default: {task.cfg:g} "
            "(the paper's).",
            callback=finite_option,
        ),
        batch_size: int = typer.Option(32, "--batch-size", min=1, help=BATCH_HELP),
        seed: int = seed_option(SEED_HELP),
        device: str = device_option(),
        attention: Attention = attention_option(),
        out: Path | None = typer.Option(
            None,
            "--out",
            help="Per-document scores: .jsonl, or a .json results file. Default: none (not "
            "written).",
        ),
        json_out: bool = json_option(JSON_HELP),
    ) -> None:
        opts = dict(locals())
        _zero_shot([name], opts, out, json_out)

    command.__doc__ = help_text
    eval_app.command(name)(command)


def _register_zero_shot() -> None:
    from mdmctl.evaluation.benchmarks import TASKS

    for t in TASKS.values():
        hub = "hub only" if t.name == "race" else f"shared file {t.file}"
        _zero_shot_command(
            t.name, f"{t.name}: zero-shot {', '.join(t.metrics)} (lm-eval formatting; {hub}).", t
        )


_register_zero_shot()


@eval_app.command("all")
def eval_all(
    checkpoint: Path | None = checkpoint_option(),
    data: str | None = typer.Option(
        None,
        "--data",
        help="Folder with the task files (e.g. ../shared/data/benchmarks). Default: the hub.",
    ),
    tasks: str | None = typer.Option(
        None,
        "--tasks",
        help="Comma-separated task names ('-' or '_': arc-easy = arc_easy). Default: every task "
        "(with --data: those with a file).",
    ),
    limit: int | None = typer.Option(
        None, "--limit", min=1, help="First N documents per task. Default: all."
    ),
    estimator: EstimatorName | None = typer.Option(
        None,
        "--estimator",
        help="MDM: mc or chain-rule for every task. Default: the paper's per task.",
    ),
    mc_samples: int = typer.Option(128, "--mc-samples", "--mc-num", min=1, help=MC_SAMPLES_HELP),
    cfg: float | None = typer.Option(
        None,
        "--cfg",
        help="MDM unsupervised CFG scale for every task. Default: the paper's per task.",
        callback=finite_option,
    ),
    batch_size: int = typer.Option(32, "--batch-size", min=1, help=BATCH_HELP),
    seed: int = seed_option(SEED_HELP),
    device: str = device_option(),
    attention: Attention = attention_option(),
    out: Path | None = typer.Option(
        None,
        "--out",
        help="Write one results file (.json: metrics and per-document scores). Default: none "
        "(not written; the table goes to stdout).",
    ),
    json_out: bool = json_option(JSON_HELP),
) -> None:
    """Run the zero-shot suite (with --out, into one results file)."""
    from mdmctl.evaluation.benchmarks import TASKS

    if data and not Path(data).is_dir():
        with cli_errors():
            raise ConfigError(f"--data: {data} is not a folder (eval all reads one file per task)")
    if tasks:
        by_key = {canonical_name(n): n for n in TASKS}  # arc-easy = arc_easy
        names = [n.strip() for n in tasks.split(",") if n.strip()]
        names = [by_key.get(canonical_name(n), n) for n in names]
    elif data and Path(data).is_dir():
        names = [n for n, t in TASKS.items() if (Path(data) / t.file).is_file()]
    else:
        names = list(TASKS)
    opts = dict(locals())
    _zero_shot(names, opts, out, json_out)
