"""``mdmctl sample``: a thin layer over ``mdmctl.sampling.sample_from_checkpoint``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer

from mdmctl.cli.common import (
    GEN_BATCH_HELP,
    SAMPLER_HELP,
    Attention,
    SamplerName,
    app,
    attention_option,
    checkpoint_option,
    cli_errors,
    device_option,
    finite_option,
    json_option,
    log_info,
    seed_option,
    with_decoding_options,
)
from mdmctl.errors import ConfigError
from mdmctl.progress import library_progress


@app.command()
@with_decoding_options
def sample(
    checkpoint: Path | None = checkpoint_option(),
    prompt: list[str] = typer.Option(
        None, "--prompt", help="Prompt text (repeatable). Default: unconditional."
    ),
    prompt_file: Path | None = typer.Option(
        None, "--prompt-file", help="One prompt per line (added to --prompt). Default: none."
    ),
    length: int | None = typer.Option(
        None,
        "--length",
        min=1,
        help="Tokens to generate. Default: what fits in the model's context after the prompt, "
        "at most 256.",
    ),
    steps: int | None = typer.Option(
        None,
        "--steps",
        min=1,
        help="Denoising steps (MDM). Default: the generation length (one token per step).",
    ),
    sampler: SamplerName = typer.Option(SamplerName.confidence, "--sampler", help=SAMPLER_HELP),
    temperature: float = typer.Option(
        1.0, "--temperature", min=0, help="Sampling temperature; 0 = argmax.", callback=finite_option
    ),
    cfg: float = typer.Option(
        0.0,
        "--cfg",
        min=0,
        help="Unsupervised classifier-free guidance scale (MDM).",
        callback=finite_option,
    ),
    decoding: dict[str, Any] | None = None,  # with_decoding_options
    seed: int = seed_option(
        "Seed of the sampling noise. Each sequence draws from its own stream (the seed and its "
        "place in the request), so no sample depends on --batch-size."
    ),
    num_samples: int = typer.Option(1, "--num-samples", min=1, help="Samples per prompt."),
    batch_size: int = typer.Option(16, "--batch-size", min=1, help=GEN_BATCH_HELP),
    stop_at_eos: bool = typer.Option(
        True, "--stop-at-eos/--no-stop-at-eos", help="Truncate at end-of-text."
    ),
    device: str = device_option(),
    attention: Attention = attention_option(),
    json_out: bool = json_option("One JSON object per sample on stdout."),
) -> None:
    """Generate text from a checkpoint."""
    with cli_errors(), library_progress():
        from mdmctl.log import console
        from mdmctl.sampling import SampleConfig, sample_from_checkpoint

        prompts = list(prompt or [])
        if prompt_file is not None:
            try:
                prompts += [
                    ln.rstrip("\n")
                    for ln in prompt_file.read_text(encoding="utf-8").splitlines()
                    if ln.strip()
                ]
            except (OSError, UnicodeDecodeError) as e:
                raise ConfigError(f"--prompt-file {prompt_file}: {e}") from None
        scfg = SampleConfig.create(
            checkpoint=str(checkpoint) if checkpoint else None,
            prompts=tuple(prompts or [""]),
            length=length,
            steps=steps,
            sampler=sampler.value,
            temperature=temperature,
            cfg=cfg,
            seed=seed,
            num_samples=num_samples,
            batch_size=batch_size,
            device=device,
            attention=attention.value,
            stop_at_eos=stop_at_eos,
            **decoding,
        )
        res = sample_from_checkpoint(scfg, log=log_info)
        for s in res.samples:
            if json_out:
                print(json.dumps({"prompt": s.prompt, "text": s.text, "token_ids": s.token_ids}))
            else:
                print(s.prompt + s.text)
                print("-" * 40)
        console.print(
            f"{res.objective} {res.checkpoint}: {len(res.samples)} samples, {res.generated_tokens} "
            f"generated tokens in {res.seconds:.2f}s ({res.tokens_per_s:,.1f} tokens/s), "
            f"{res.nfe} forward passes",
            highlight=False,
        )
