"""``mdmctl eval reverse-curse``: a thin layer over
``mdmctl.evaluation.reverse_curse.evaluate_reverse_curse``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer

from mdmctl.cli.common import (
    SAMPLER_HELP,
    Attention,
    SamplerName,
    attention_option,
    canonical_name,
    checkpoint_option,
    cli_errors,
    device_option,
    eval_app,
    finite_option,
    json_option,
    log_info,
    recipe_defaults,
    seed_option,
    with_decoding_options,
)
from mdmctl.progress import library_progress


@eval_app.command("reverse-curse")
@with_decoding_options
def eval_reverse_curse(
    ctx: typer.Context,
    checkpoint: Path | None = checkpoint_option(),
    data_dir: Path = typer.Option(
        ...,
        "--data-dir",
        help="Folder with the reversal-curse test files (e.g. ../shared/data/reversal_curse).",
    ),
    out: Path | None = typer.Option(
        None, "--out", help="Per-example jsonl. Default: none (not written)."
    ),
    limit: int | None = typer.Option(
        None, "--limit", min=1, help="First N prompts of each file. Default: all."
    ),
    total_length: int = typer.Option(
        52, "--total-length", min=2, help="Prompt + generation tokens (SMDM: 52)."
    ),
    rank: bool = typer.Option(
        False,
        "--rank",
        help="Also rank each reference by likelihood against the other names (description -> name files) or one description of every other person (name -> description files); MDM: conditional ELBO, ARM: exact.",
    ),
    rank_mc: int = typer.Option(
        16, "--rank-mc", min=1, help="MDM: stratified t samples per candidate for --rank."
    ),
    splits: str = typer.Option(
        "p2d_same,p2d_reverse,d2p_same,d2p_reverse",
        "--splits",
        help="Comma-separated test files to run (ranking descriptions is the slow part).",
    ),
    steps: int = typer.Option(32, "--steps", min=1, help="Denoising steps (SMDM: 32)."),
    sampler: SamplerName = typer.Option(SamplerName.confidence, "--sampler", help=SAMPLER_HELP),
    temperature: float = typer.Option(
        0.0,
        "--temperature",
        min=0,
        help="Sampling temperature; 0 = argmax (SMDM: 0).",
        callback=finite_option,
    ),
    cfg: float = typer.Option(
        0.8,
        "--cfg",
        min=0,
        help="Unsupervised CFG (SMDM: 0.8; ARM checkpoints: 0).",
        callback=finite_option,
    ),
    decoding: dict[str, Any] | None = None,  # with_decoding_options
    batch_size: int = typer.Option(
        64,
        "--batch-size",
        min=1,
        help="Sequences generated together in one batch (--rank: 4x as many rows per forward).",
    ),
    seed: int = seed_option("Seed of the sampling noise and of --rank (SMDM: 1234)."),
    device: str = device_option(),
    attention: Attention = attention_option(),
    json_out: bool = json_option("Print one JSON object per split on stdout."),
) -> None:
    """Reverse-curse accuracy and BLEU in the trained and the reverse direction."""
    with cli_errors(), library_progress():
        from rich.table import Table

        from mdmctl.evaluation.reverse_curse import SPLITS, evaluate_reverse_curse
        from mdmctl.log import results_console
        from mdmctl.sampling import SampleConfig

        scfg = SampleConfig.create(
            checkpoint=str(checkpoint) if checkpoint else None,
            steps=steps,
            sampler=sampler.value,
            temperature=temperature,
            cfg=cfg,
            seed=seed,
            batch_size=batch_size,
            device=device,
            attention=attention.value,
            defaults=recipe_defaults(ctx, cfg=cfg, steps=steps, sampler=sampler.value),
            **decoding,
        )
        res = evaluate_reverse_curse(
            data_dir=str(data_dir),
            checkpoint=scfg.checkpoint,
            sample_cfg=scfg,
            total_length=total_length,
            limit=limit,
            out=str(out) if out else None,
            rank=rank,
            rank_mc=rank_mc,
            splits=tuple(_split_name(x.strip(), SPLITS) for x in splits.split(",") if x.strip()),
            log=log_info,
        )
        if out:
            log_info(f"wrote {out}")
        if json_out:
            print(json.dumps([r.__dict__ for r in res], indent=2))
            return
        t = Table(title="reverse curse")
        cols = ["split", "direction", "n", "accuracy", "BLEU (SMDM, chars)", "BLEU-4 (words)"] + (
            ["rank acc. (chance)"] if rank else []
        )
        for col in cols:
            t.add_column(col)
        for r in res:
            row = [
                r.split,
                r.direction,
                str(r.n),
                f"{r.accuracy:.3f} ± {r.stderr:.3f}",
                f"{r.bleu_smdm:.1f}",
                f"{r.bleu:.1f}",
            ]
            if rank:
                row.append(f"{r.rank_accuracy:.3f} ± {r.rank_stderr:.3f} ({1 / r.candidates:.3f})")
            t.add_row(*row)
        results_console().print(t)


def _split_name(name: str, known: dict) -> str:
    """``p2d-same`` -> ``p2d_same``: '-' and '_' are interchangeable; unknown names pass through
    (the library reports them)."""
    return next((k for k in known if canonical_name(k) == canonical_name(name)), name)
