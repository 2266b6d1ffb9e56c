"""``mdmctl eval <task>`` for each zero-shot benchmark, and ``mdmctl eval all``: thin layers
over ``mdmctl.evaluation.zero_shot.evaluate_tasks``."""

from __future__ import annotations

import json
from enum import Enum
from pathlib import Path
from typing import Any

import typer

from mdmctl.cli.common import Attention, _finite, _log, cli_errors, eval_app
from mdmctl.errors import ConfigError


def _render_zero_shot(results: list[Any], json_out: bool) -> None:
    from rich.table import Table

    from mdmctl.log import console

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
    console.print(t)
    for r in results:
        if r.truncated:
            console.print(
                f"{r.task}: {r.truncated} of {r.requests} requests cut on the left to fit the "
                "model's context",
                highlight=False,
            )


def _zero_shot(names: list[str], opts: dict[str, Any], out: Path | None, json_out: bool) -> None:
    with cli_errors():
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
        results = evaluate_tasks(names, cfg, out=str(out) if out else None, log=_log)
        _render_zero_shot(results, json_out)


class EstimatorName(str, Enum):
    mc = "mc"
    chain_rule = "chain-rule"


def _zero_shot_command(name: str, help_text: str) -> None:
    def command(
        checkpoint: Path | None = typer.Option(
            None, "--checkpoint", help="Step dir or run dir. Default: the newest run."
        ),
        data: str | None = typer.Option(
            None,
            "--data",
            help="Task jsonl in lm-eval's formatting (../shared/data/benchmarks layout) or its "
            "folder. Default: the hub dataset lm-eval uses (online only).",
        ),
        limit: int | None = typer.Option(None, "--limit", min=1, help="First N documents."),
        estimator: EstimatorName | None = typer.Option(
            None, "--estimator", help="MDM: mc or chain-rule. Default: the paper's per task."
        ),
        mc_samples: int = typer.Option(
            128, "--mc-samples", "--mc-num", min=1, help="MDM mc: stratified t samples."
        ),
        cfg: float | None = typer.Option(
            None,
            "--cfg",
            help="MDM unsupervised CFG scale. Default: the paper's per task.",
            callback=_finite,
        ),
        batch_size: int = typer.Option(32, "--batch-size", min=1, help="Rows per forward."),
        seed: int = typer.Option(0, "--seed"),
        device: str = typer.Option("auto", "--device"),
        attention: Attention = typer.Option(Attention.auto, "--attention"),
        out: Path | None = typer.Option(
            None, "--out", help="Per-document scores: .jsonl, or a .json results file."
        ),
        json_out: bool = typer.Option(False, "--json"),
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
            t.name, f"{t.name}: zero-shot {', '.join(t.metrics)} (lm-eval formatting; {hub})."
        )


_register_zero_shot()


@eval_app.command("all")
def eval_all(
    checkpoint: Path | None = typer.Option(
        None, "--checkpoint", help="Step dir or run dir. Default: the newest run."
    ),
    data: str | None = typer.Option(
        None,
        "--data",
        help="Folder with the task files (e.g. ../shared/data/benchmarks). Default: the hub.",
    ),
    tasks: str | None = typer.Option(
        None,
        "--tasks",
        help="Comma-separated task names. Default: every task (with --data: those with a file).",
    ),
    limit: int | None = typer.Option(None, "--limit", min=1, help="First N documents per task."),
    estimator: EstimatorName | None = typer.Option(
        None, "--estimator", help="MDM: mc or chain-rule for every task. Default: per task."
    ),
    mc_samples: int = typer.Option(128, "--mc-samples", "--mc-num", min=1),
    cfg: float | None = typer.Option(
        None, "--cfg", help="MDM CFG for every task.", callback=_finite
    ),
    batch_size: int = typer.Option(32, "--batch-size", min=1),
    seed: int = typer.Option(0, "--seed"),
    device: str = typer.Option("auto", "--device"),
    attention: Attention = typer.Option(Attention.auto, "--attention"),
    out: Path = typer.Option(
        Path("eval-zero-shot.json"),
        "--out",
        help="One results file: metrics and per-document scores.",
    ),
    json_out: bool = typer.Option(False, "--json"),
) -> None:
    """Run the zero-shot suite and write one results file."""
    from mdmctl.evaluation.benchmarks import TASKS

    if data and not Path(data).is_dir():
        with cli_errors():
            raise ConfigError(f"--data: {data} is not a folder (eval all reads one file per task)")
    if tasks:
        names = [n.strip() for n in tasks.split(",") if n.strip()]
    elif data and Path(data).is_dir():
        names = [n for n, t in TASKS.items() if (Path(data) / t.file).is_file()]
    else:
        names = list(TASKS)
    opts = dict(locals())
    _zero_shot(names, opts, out, json_out)
