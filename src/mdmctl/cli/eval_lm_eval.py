"""``mdmctl eval lm-eval``: a thin layer over ``mdmctl.evaluation.lm_eval_run.run_lm_eval``."""

from __future__ import annotations

from pathlib import Path

from mdmctl.cli.common import cli_errors, eval_app, log_info, print_json
from mdmctl.cli.options import CHECKPOINT, DEVICE, Opt, Options, command, json_out


@command(
    eval_app,
    "lm-eval",
    tasks=Opt(("--tasks",), str, ..., "Comma-separated lm-eval task names."),
    checkpoint=CHECKPOINT,
    model_args=Opt(("--model-args",), str, "",
                   "key=value,... for the mdmctl model: estimator, mc_num, cfg, greedy, steps, "
                   "sampler, temperature, max_gen_toks, seed, attention (docs/cli.md). Default: "
                   "none (each key's default)."),
    num_fewshot=Opt(("--num-fewshot",), int | None, None,
                    "Few-shot examples per prompt. Default: each task's own (lm-eval's).", min=0),
    limit=Opt(("--limit",), float | None, None,
              "Documents per task (or a fraction). Default: all."),
    batch_size=Opt(("--batch-size",), int, 32, "Rows per forward.", min=1),
    device=DEVICE,
    include_path=Opt(("--include-path",), Path | None, None,
                     "Folder of extra task YAMLs (e.g. tasks over local files). Default: none."),
    output=Opt(("--output",), Path | None, None,
               "Write the results JSON here. Default: none (not written)."),
    bootstrap_iters=Opt(("--bootstrap-iters",), int, 100000,
                        "lm-eval's bootstrap for non-mean metrics' s.e.", min=0),
    **json_out("Print lm-eval's results as JSON on stdout (else its table)."),
)  # fmt: skip
def eval_lm_eval(o: Options) -> None:
    """Any lm-evaluation-harness task through the mdmctl model (pip install 'mdmctl[eval]')."""
    from mdmctl.progress import library_progress

    with cli_errors(), library_progress():
        from mdmctl.evaluation.lm_eval_run import run_lm_eval

        res = run_lm_eval(
            tasks=[t.strip() for t in o.tasks.split(",") if t.strip()],
            checkpoint=str(o.checkpoint) if o.checkpoint else None,
            include_path=str(o.include_path) if o.include_path else None,
            output=str(o.output) if o.output else None,
            **o.pick("model_args", "num_fewshot", "limit", "batch_size", "device",
                     "bootstrap_iters"),
        )  # fmt: skip
        if o.output:
            log_info(f"wrote {o.output}")
        if o.json_out:
            print_json(res["results"])
        else:
            print(res["table"])
