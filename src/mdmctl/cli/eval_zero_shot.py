"""``mdmctl eval <task>`` for each zero-shot benchmark, and ``mdmctl eval all``: thin layers
over ``mdmctl.evaluation.zero_shot.evaluate_tasks``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mdmctl.cli.common import canonical_name, cli_errors, eval_app, log_info, print_json
from mdmctl.cli.options import (
    CFG,
    CHECKPOINT,
    GEN_DTYPE,
    RUNTIME,
    SEED,
    Opt,
    Options,
    choice,
    command,
    data,
    json_out,
    limit,
    out,
)
from mdmctl.errors import ConfigError
from mdmctl.evaluation.benchmarks import ESTIMATORS

ESTIMATOR_HELP = ("MDM: mc (the ELBO, t stratified), mc-count (LLaDA's: exactly k of the "
                  "answer's tokens masked, k uniform), mc-dream (Dream's: mc with the canvas's "
                  "last position never masked) or chain-rule")  # fmt: skip
ESTIMATOR = Opt(("--estimator",), choice(ESTIMATORS, "estimator") | None, None,
                ESTIMATOR_HELP + ".")  # fmt: skip
SCORING = {
    "mc_samples": Opt(("--mc-samples", "--mc-num"), int, 128,
                      "MDM Monte Carlo estimators: samples per request.", min=1),
    "cfg": CFG.but(type=float | None, default=None, min=None),
    "batch_size": Opt(("--batch-size",), int, 32, "Rows per forward.", min=1),
    "seed": SEED.but(help="Seed of the MDM's Monte Carlo draws."),
    **RUNTIME,
    "dtype": GEN_DTYPE,
}  # fmt: skip
JSON = json_out("Print the results as JSON on stdout.")


def _zero_shot(names: list[str], o: Options) -> None:
    from mdmctl.progress import library_progress

    with cli_errors(), library_progress():
        from mdmctl.evaluation.zero_shot import ZeroShotConfig, evaluate_tasks

        cfg = ZeroShotConfig(
            checkpoint=str(o.checkpoint) if o.checkpoint else None,
            **o.pick("data", "limit", "estimator", "mc_samples", "cfg", "batch_size", "seed",
                     "device", "attention", "dtype"),
        )  # fmt: skip
        results = evaluate_tasks(names, cfg, out=str(o.out) if o.out else None, log=log_info)
        _render(results, o.json_out)
        if o.out:
            log_info(f"wrote {o.out}")


def _render(results: list[Any], as_json: bool) -> None:
    from rich.table import Table

    from mdmctl.log import console, results_console

    if as_json:
        print_json([r.to_dict() for r in results])
        return
    t = Table(title="zero-shot")
    for col in ("task", "n", "metric", "value", "estimator", "cfg", "requests/s"):
        t.add_column(col)
    for r in results:
        est = r.estimator + (f" x{r.mc_samples}" if r.mc_samples else "")
        for i, (m, v) in enumerate(r.metrics.items()):
            bound = " (bound)" if m == "perplexity" and r.estimator == "mc" else ""
            value = (f"{v:.4g} ± {r.stderr[m]:.2g}" if m == "perplexity"
                     else f"{v:.4f} ± {r.stderr[m]:.4f}")  # fmt: skip
            first = i == 0
            t.add_row(r.task if first else "", str(r.n) if first else "", m + bound, value,
                      est if first else "", f"{r.cfg:g}" if first else "",
                      f"{r.requests_per_s:.1f}" if first else "")  # fmt: skip
    results_console().print(t)
    for r in results:
        if r.truncated:
            console.print(
                f"{r.task}: {r.truncated} of {r.requests} requests cut on the left to fit the "
                "model's context",
                highlight=False,
            )


def _register_task(task: Any) -> None:
    def run(o: Options) -> None:
        _zero_shot([task.name], o)

    hub = "hub only" if task.name == "race" else f"shared file {task.file}"
    run.__doc__ = f"{task.name}: zero-shot {', '.join(task.metrics)} (lm-eval formatting; {hub})."
    command(
        eval_app,
        task.name,
        checkpoint=CHECKPOINT,
        data=data("Task jsonl in lm-eval's formatting (../shared/data/benchmarks layout) or its "
                  f"folder. Default: the hub's {task.hub[0]}, as lm-eval loads it (online only)."),
        limit=limit("documents"),
        estimator=ESTIMATOR.but(help=f"{ESTIMATOR_HELP} (ARM checkpoints: exact). Default: "
                                f"{task.estimator} (the paper's)."),
        **{**SCORING, "cfg": SCORING["cfg"].but(
            help=f"MDM unsupervised CFG scale (ARM checkpoints: none). Default: {task.cfg:g} "
            "(the paper's).")},
        out=out("Per-document scores: .jsonl, or a .json results file. Default: none (not "
                "written)."),
        **JSON,
    )(run)  # fmt: skip


def _register_tasks() -> None:
    from mdmctl.evaluation.benchmarks import TASKS

    for task in TASKS.values():
        _register_task(task)


_register_tasks()


@command(
    eval_app,
    "all",
    checkpoint=CHECKPOINT,
    data=data("Folder with the task files (e.g. ../shared/data/benchmarks). Default: the hub."),
    tasks=Opt(("--tasks",), str | None, None,
              "Comma-separated task names ('-' or '_': arc-easy = arc_easy). Default: every task "
              "(with --data: those with a file)."),
    limit=limit("documents per task"),
    estimator=ESTIMATOR.but(help=f"{ESTIMATOR_HELP}, for every task. Default: the paper's "
                            "per task."),
    **{**SCORING, "cfg": SCORING["cfg"].but(
        help="MDM unsupervised CFG scale for every task. Default: the paper's per task.")},
    out=out("Write one results file (.json: metrics and per-document scores). Default: none "
            "(not written; the table goes to stdout)."),
    **JSON,
)  # fmt: skip
def eval_all(o: Options) -> None:
    """Run the zero-shot suite (with --out, into one results file)."""
    from mdmctl.evaluation.benchmarks import TASKS

    if o.data and not Path(o.data).is_dir():
        with cli_errors():
            raise ConfigError(
                f"--data: {o.data} is not a folder (eval all reads one file per task)"
            )
    if o.tasks:
        by_key = {canonical_name(n): n for n in TASKS}  # arc-easy = arc_easy
        names = [n.strip() for n in o.tasks.split(",") if n.strip()]
        names = [by_key.get(canonical_name(n), n) for n in names]
    elif o.data:
        names = [n for n, t in TASKS.items() if (Path(o.data) / t.file).is_file()]
    else:
        names = list(TASKS)
    _zero_shot(names, o)
