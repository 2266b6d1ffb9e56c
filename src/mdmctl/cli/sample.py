"""``mdmctl sample``: a thin layer over ``mdmctl.sampling.sample_from_checkpoint``."""

from __future__ import annotations

import json
from pathlib import Path

from mdmctl.cli import options as opt
from mdmctl.cli.common import app, cli_errors, log_info
from mdmctl.errors import ConfigError
from mdmctl.sampling.config import SampleConfig
from mdmctl.sampling.decoding import Decoding


@opt.command(
    app,
    "sample",
    checkpoint=opt.CHECKPOINT,
    prompt=opt.Opt(("--prompt",), list[str], None,
                   "Prompt text (repeatable). Default: unconditional."),
    prompt_file=opt.Opt(("--prompt-file",), Path | None, None,
                        "One prompt per line (added to --prompt). Default: none."),
    length=opt.Opt(("--length",), int | None, None,
                   "Tokens to generate. Default: what fits in the model's context after the "
                   "prompt, at most 256.", min=1),
    preset=opt.from_field(SampleConfig, "preset"),
    steps=opt.STEPS.but(note="Default: the generation length (one token per step)."),
    sampler=opt.SAMPLER,
    temperature=opt.TEMPERATURE.but(default=1.0),
    cfg=opt.CFG,
    **opt.DECODING,
    seed=opt.SEED.but(help="Seed of the sampling noise. Each sequence draws from its own "
                      "stream (the seed and its place in the request), so no sample depends "
                      "on --batch-size."),
    num_samples=opt.Opt(("--num-samples",), int, 1, "Samples per prompt.", min=1),
    batch_size=opt.GEN_BATCH,
    stop_at_eos=opt.from_field(Decoding, "stop_at_eos", "--stop-at-eos/--no-stop-at-eos",
                               default=True),
    chat=opt.from_field(SampleConfig, "chat", "--chat/--no-chat"),
    dtype=opt.GEN_DTYPE,
    **opt.RUNTIME,
    **opt.json_out("One JSON object per sample on stdout."),
)  # fmt: skip
def sample(o: opt.Options) -> None:
    """Generate text from a checkpoint."""
    from mdmctl.progress import library_progress

    with cli_errors(), library_progress():
        from mdmctl.log import console
        from mdmctl.sampling import sample_from_checkpoint

        prompts = list(o.prompt or [])
        if o.prompt_file is not None:
            try:
                text = o.prompt_file.read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError) as e:
                raise ConfigError(f"--prompt-file {o.prompt_file}: {e}") from None
            prompts += [ln.rstrip("\n") for ln in text.splitlines() if ln.strip()]
        scfg = opt.sample_config(
            o, recipe=False, prompts=tuple(prompts or [""]), stop_at_eos=o.stop_at_eos,
            **o.pick("length", "num_samples", "chat"),
        )  # fmt: skip
        res = sample_from_checkpoint(scfg, log=log_info)
        for s in res.samples:
            if o.json_out:
                print(json.dumps({"prompt": s.prompt, "text": s.text, "token_ids": s.token_ids}))
            else:
                print(s.prompt + s.text)
                print("-" * 40)
        console.print(
            f"{res.objective} {res.checkpoint}: {len(res.samples)} samples, "
            f"{res.generated_tokens} generated tokens in {res.seconds:.2f}s "
            f"({res.tokens_per_s:,.1f} tokens/s), {res.nfe} forward passes",
            highlight=False,
        )
