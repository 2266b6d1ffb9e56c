"""``mdmctl eval ppl``: a thin layer over ``mdmctl.evaluation.ppl.evaluate_ppl``."""

from __future__ import annotations

from mdmctl.cli.common import cli_errors, eval_app, log_info, print_json
from mdmctl.cli.options import CHECKPOINT, RUNTIME, SEED, Opt, Options, command, data, json_out


@command(
    eval_app,
    "ppl",
    checkpoint=CHECKPOINT,
    data=data("Tokenized corpus dir or text files. Default: the run's corpus."),
    split=Opt(("--split",), str, "val", "Split of a tokenized corpus to score: train or val."),
    mc_samples=Opt(("--mc-samples",), int, 32, "MDM: stratified t samples per window.", min=1),
    batch_size=Opt(("--batch-size",), int, 8, "Windows per forward.", min=1),
    max_windows=Opt(("--max-windows",), int | None, None,
                    "Score only the first N context-length windows. Default: all.", min=1),
    seed=SEED.but(help="Seed of the MDM's Monte Carlo t samples."),
    text_field=Opt(("--text-field",), str, "text",
                   "Field holding the text when --data is jsonl or parquet."),
    **RUNTIME,
    **json_out("Print the result as JSON on stdout."),
)  # fmt: skip
def eval_ppl(o: Options) -> None:
    """Held-out perplexity: exact for an ARM, an ELBO upper bound for an MDM."""
    from mdmctl.progress import library_progress

    with cli_errors(), library_progress():
        from mdmctl.evaluation.ppl import PplConfig, evaluate_ppl
        from mdmctl.log import console

        r = evaluate_ppl(
            PplConfig(checkpoint=str(o.checkpoint) if o.checkpoint else None,
                      **o.pick("data", "split", "mc_samples", "batch_size", "max_windows", "seed",
                               "device", "attention", "text_field")),
            log=log_info,
        )  # fmt: skip
        if o.json_out:
            print_json({"task": "ppl", "objective": r.objective, "kind": r.kind,
                        "nll_per_token": r.nll_per_token, "stderr": r.stderr,
                        "perplexity": r.perplexity, "tokens": r.tokens, "windows": r.windows,
                        "mc_samples": r.mc_samples, "seconds": r.seconds,
                        "checkpoint": str(r.checkpoint), "data": r.data})  # fmt: skip
            return
        label = (
            "perplexity (upper bound, ELBO)" if r.kind == "upper bound" else "perplexity (exact)"
        )
        se = f" ± {r.stderr:.4f} (MC s.e.)" if r.objective == "mdm" else ""
        print(
            f"{label}: {r.perplexity:.3f}   nll/token {r.nll_per_token:.4f}{se}   "
            f"{r.tokens:,} tokens in {r.windows} windows"
        )
        console.print(f"{r.checkpoint} on {r.data} in {r.seconds:.1f}s", highlight=False)
