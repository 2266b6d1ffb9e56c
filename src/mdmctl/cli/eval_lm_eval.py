"""``mdmctl eval lm-eval``: a thin layer over ``mdmctl.evaluation.lm_eval_run.run_lm_eval``."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from mdmctl.cli.common import (
    checkpoint_option,
    cli_errors,
    device_option,
    eval_app,
    finite_option,
    json_option,
    log_info,
)
from mdmctl.progress import library_progress


@eval_app.command("lm-eval")
def eval_lm_eval(
    tasks: str = typer.Option(..., "--tasks", help="Comma-separated lm-eval task names."),
    checkpoint: Path | None = checkpoint_option(),
    model_args: str = typer.Option(
        "",
        "--model-args",
        help="key=value,... for the mdmctl model: estimator, mc_num, cfg, greedy, steps, "
        "sampler, temperature, max_gen_toks, seed, attention (docs/cli.md). Default: none "
        "(each key's default).",
    ),
    num_fewshot: int | None = typer.Option(
        None,
        "--num-fewshot",
        min=0,
        help="Few-shot examples per prompt. Default: each task's own (lm-eval's).",
    ),
    limit: float | None = typer.Option(
        None,
        "--limit",
        help="Documents per task (or a fraction). Default: all.",
        callback=finite_option,
    ),
    batch_size: int = typer.Option(32, "--batch-size", min=1, help="Rows per forward."),
    device: str = device_option(),
    include_path: Path | None = typer.Option(
        None,
        "--include-path",
        help="Folder of extra task YAMLs (e.g. tasks over local files). Default: none.",
    ),
    output: Path | None = typer.Option(
        None, "--output", help="Write the results JSON here. Default: none (not written)."
    ),
    bootstrap_iters: int = typer.Option(
        100000, "--bootstrap-iters", min=0, help="lm-eval's bootstrap for non-mean metrics' s.e."
    ),
    json_out: bool = json_option("Print lm-eval's results as JSON on stdout (else its table)."),
) -> None:
    """Any lm-evaluation-harness task through the mdmctl model (pip install 'mdmctl[eval]')."""
    with cli_errors(), library_progress():
        from mdmctl.evaluation.lm_eval_run import run_lm_eval

        res = run_lm_eval(
            tasks=[t.strip() for t in tasks.split(",") if t.strip()],
            checkpoint=str(checkpoint) if checkpoint else None,
            model_args=model_args,
            num_fewshot=num_fewshot,
            limit=limit,
            batch_size=batch_size,
            device=device,
            include_path=str(include_path) if include_path else None,
            output=str(output) if output else None,
            bootstrap_iters=bootstrap_iters,
        )
        if output:
            log_info(f"wrote {output}")
        if json_out:
            print(json.dumps(res["results"], indent=2, default=str))
        else:
            print(res["table"])
