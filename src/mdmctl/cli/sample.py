"""``mdmctl sample``: a thin layer over ``mdmctl.sampling.sample_from_checkpoint``."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from mdmctl.cli.common import Attention, SamplerName, _finite, _log, app, cli_errors
from mdmctl.errors import ConfigError


@app.command()
def sample(
    checkpoint: Path | None = typer.Option(
        None,
        "--checkpoint",
        help="Step dir or run dir. Default: the newest run's newest checkpoint.",
    ),
    prompt: list[str] = typer.Option(
        None, "--prompt", help="Prompt text (repeatable). Default: unconditional."
    ),
    prompt_file: Path | None = typer.Option(None, "--prompt-file", help="One prompt per line."),
    length: int = typer.Option(64, "--length", min=1, help="Tokens to generate."),
    steps: int = typer.Option(64, "--steps", min=1, help="Denoising steps (MDM)."),
    sampler: SamplerName = typer.Option(SamplerName.confidence, "--sampler"),
    temperature: float = typer.Option(
        1.0, "--temperature", min=0, help="0 = argmax.", callback=_finite
    ),
    cfg: float = typer.Option(
        0.0,
        "--cfg",
        min=0,
        help="Unsupervised classifier-free guidance scale (MDM).",
        callback=_finite,
    ),
    seed: int = typer.Option(0, "--seed"),
    num_samples: int = typer.Option(1, "--num-samples", min=1, help="Samples per prompt."),
    batch_size: int = typer.Option(16, "--batch-size", min=1),
    stop_at_eos: bool = typer.Option(
        True, "--stop-at-eos/--no-stop-at-eos", help="Truncate at end-of-text."
    ),
    device: str = typer.Option("auto", "--device"),
    attention: Attention = typer.Option(Attention.auto, "--attention"),
    json_out: bool = typer.Option(False, "--json", help="One JSON object per sample on stdout."),
) -> None:
    """Generate text from a checkpoint."""
    with cli_errors():
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
        scfg = SampleConfig(
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
        )
        res = sample_from_checkpoint(scfg, log=_log)
        _warn_ignored_mdm_options(res.objective, steps=steps, sampler=sampler.value)
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


def _warn_ignored_mdm_options(objective: str, *, steps: int, sampler: str) -> None:
    """One stderr line when an ARM checkpoint is given MDM-only options it cannot use (its
    decoding is left to right: no denoising steps, no reveal order). ``--cfg`` is an error
    instead (B26): it would change the result, these only look as if they did."""
    from mdmctl.log import console

    if objective != "arm":
        return
    given = [
        name
        for name, value, default in (("--steps", steps, 64), ("--sampler", sampler, "confidence"))
        if value != default
    ]
    if given:
        verb = "applies" if len(given) == 1 else "apply"
        console.print(
            f"warning: {', '.join(given)} {verb} only to MDM checkpoints; ignored for this ARM "
            "checkpoint",
            highlight=False,
            soft_wrap=True,
        )
