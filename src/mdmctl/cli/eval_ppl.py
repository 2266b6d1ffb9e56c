"""``mdmctl eval ppl``: a thin layer over ``mdmctl.evaluation.ppl.evaluate_ppl``."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from mdmctl.cli.common import (
    Attention,
    attention_option,
    checkpoint_option,
    cli_errors,
    device_option,
    eval_app,
    json_option,
    log_info,
    seed_option,
)
from mdmctl.progress import library_progress


@eval_app.command("ppl")
def eval_ppl(
    checkpoint: Path | None = checkpoint_option(),
    data: str | None = typer.Option(
        None, "--data", help="Tokenized corpus dir or text files. Default: the run's corpus."
    ),
    split: str = typer.Option(
        "val", "--split", help="Split of a tokenized corpus to score: train or val."
    ),
    mc_samples: int = typer.Option(
        32, "--mc-samples", min=1, help="MDM: stratified t samples per window."
    ),
    batch_size: int = typer.Option(8, "--batch-size", min=1, help="Windows per forward."),
    max_windows: int | None = typer.Option(
        None,
        "--max-windows",
        min=1,
        help="Score only the first N context-length windows. Default: all.",
    ),
    seed: int = seed_option("Seed of the MDM's Monte Carlo t samples."),
    text_field: str = typer.Option(
        "text", "--text-field", help="Field holding the text when --data is jsonl or parquet."
    ),
    device: str = device_option(),
    attention: Attention = attention_option(),
    json_out: bool = json_option("Print the result as JSON on stdout."),
) -> None:
    """Held-out perplexity: exact for an ARM, an ELBO upper bound for an MDM."""
    with cli_errors(), library_progress():
        from mdmctl.evaluation.ppl import PplConfig, evaluate_ppl
        from mdmctl.log import console

        r = evaluate_ppl(
            PplConfig(
                checkpoint=str(checkpoint) if checkpoint else None,
                data=data,
                split=split,
                mc_samples=mc_samples,
                batch_size=batch_size,
                max_windows=max_windows,
                seed=seed,
                device=device,
                attention=attention.value,
                text_field=text_field,
            ),
            log=log_info,
        )
        d = {
            "task": "ppl",
            "objective": r.objective,
            "kind": r.kind,
            "nll_per_token": r.nll_per_token,
            "stderr": r.stderr,
            "perplexity": r.perplexity,
            "tokens": r.tokens,
            "windows": r.windows,
            "mc_samples": r.mc_samples,
            "seconds": r.seconds,
            "checkpoint": str(r.checkpoint),
            "data": r.data,
        }
        if json_out:
            print(json.dumps(d, indent=2))
        else:
            label = (
                "perplexity (upper bound, ELBO)"
                if r.kind == "upper bound"
                else "perplexity (exact)"
            )
            se = f" ± {r.stderr:.4f} (MC s.e.)" if r.objective == "mdm" else ""
            print(
                f"{label}: {r.perplexity:.3f}   nll/token {r.nll_per_token:.4f}{se}   "
                f"{r.tokens:,} tokens in {r.windows} windows"
            )
            console.print(f"{r.checkpoint} on {r.data} in {r.seconds:.1f}s", highlight=False)
