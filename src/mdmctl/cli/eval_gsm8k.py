"""``mdmctl eval gsm8k``: a thin layer over ``mdmctl.evaluation.gsm8k.evaluate_gsm8k``."""

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
from mdmctl.errors import ConfigError
from mdmctl.progress import library_progress


@eval_app.command("gsm8k")
@with_decoding_options
def eval_gsm8k(
    ctx: typer.Context,
    checkpoint: Path | None = checkpoint_option(),
    data: str | None = typer.Option(
        None,
        "--data",
        help="GSM8K jsonl (question / answer). Default: the hub's openai/gsm8k test split (online only).",
    ),
    predictions: Path | None = typer.Option(
        None,
        "--predictions",
        help="Re-score generations from a jsonl (one line per problem) without loading a model. "
        "Default: none (generate).",
    ),
    out: Path | None = typer.Option(
        None,
        "--out",
        help="Per-problem jsonl: generation, prediction, verdict. Default: none (not written).",
    ),
    limit: int | None = typer.Option(
        None, "--limit", min=1, help="First N problems only. Default: all."
    ),
    fewshot: int = typer.Option(
        0, "--fewshot", min=0, help="Worked examples before each question."
    ),
    fewshot_data: str | None = typer.Option(
        None,
        "--fewshot-data",
        help="jsonl (question / answer) the few-shot examples come from, e.g. the train split. "
        "Default: none (needed with --fewshot).",
    ),
    total_length: int | None = typer.Option(
        None,
        "--total-length",
        min=2,
        help="Each stage's canvas: prompt + generated tokens, capped at the model context. "
        "Default: 256 (SMDM --length 256).",
    ),
    length: int | None = typer.Option(
        None,
        "--length",
        min=1,
        help="Generate exactly this many tokens per stage instead of filling --total-length. "
        "Default: fill --total-length.",
    ),
    steps: int = typer.Option(
        256, "--steps", min=1, help="Denoising steps per stage (SMDM --steps 256)."
    ),
    two_stage: bool = typer.Option(
        True,
        "--two-stage/--one-stage",
        help="Stage 1 writes the reasoning, stage 2 '####' and the answer after it (SMDM).",
    ),
    answer_length: int | None = typer.Option(
        None,
        "--answer-length",
        min=1,
        help="Stage 2 only: generate this many tokens. Default: as stage 1 (--length, else fill "
        "--total-length).",
    ),
    sampler: SamplerName = typer.Option(SamplerName.confidence, "--sampler", help=SAMPLER_HELP),
    temperature: float = typer.Option(
        0.1,
        "--temperature",
        min=0,
        help="Sampling temperature; 0 = argmax (SMDM --temperature 0.1).",
        callback=finite_option,
    ),
    cfg: float = typer.Option(
        0.1,
        "--cfg",
        min=0,
        help="Unsupervised CFG scale (SMDM --cfg1 0.1; ARM checkpoints: 0).",
        callback=finite_option,
    ),
    answer_cfg: float | None = typer.Option(
        None,
        "--answer-cfg",
        min=0,
        help="Stage 2's CFG scale (SMDM --cfg2 0.1). Default: --cfg.",
        callback=finite_option,
    ),
    decoding: dict[str, Any] | None = None,  # with_decoding_options
    batch_size: int = typer.Option(
        32, "--batch-size", min=1, help="Sequences generated together in one batch (SMDM: 64)."
    ),
    seed: int = seed_option("Seed of the sampling noise (SMDM: 1234)."),
    device: str = device_option(),
    attention: Attention = attention_option(),
    json_out: bool = json_option("Print accuracy, compliance and settings as JSON on stdout."),
) -> None:
    """GSM8K accuracy: generate, extract the final number, exact match."""
    with cli_errors(), library_progress():
        from mdmctl.evaluation.gsm8k import evaluate_gsm8k
        from mdmctl.sampling import SampleConfig

        if length is not None and total_length is not None:
            raise ConfigError("give --total-length (the canvas) or --length (generated tokens)")
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
        r = evaluate_gsm8k(
            data=data,
            checkpoint=scfg.checkpoint,
            predictions=str(predictions) if predictions else None,
            out=str(out) if out else None,
            limit=limit,
            fewshot=fewshot,
            fewshot_data=fewshot_data,
            sample_cfg=scfg,
            total_length=total_length or 256,
            length=length,
            two_stage=two_stage,
            answer_length=answer_length,
            answer_cfg=answer_cfg,
            log=log_info,
        )
        d = {
            "task": "gsm8k",
            "accuracy": r.accuracy,
            "stderr": r.stderr,
            "n": r.n,
            "correct": r.correct,
            "seconds_per_problem": r.seconds_per_problem,
            "predictions": r.predictions_path,
            "compliance": r.compliance,
            "settings": r.settings,
        }
        if r.predictions_path:
            log_info(f"wrote {r.predictions_path}")
        if json_out:
            print(json.dumps(d, indent=2))
        else:
            per = f", {r.seconds_per_problem:.2f} s/problem" if r.seconds_per_problem else ""
            print(f"gsm8k accuracy {r.accuracy:.4f} ± {r.stderr:.4f} ({r.correct}/{r.n}{per})")
            shares = ", ".join(
                f"{k.replace('_', ' ')} {v:.1%}" for k, v in r.compliance.items() if v is not None
            )
            print(f"format: {shares}")
