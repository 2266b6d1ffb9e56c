"""``mdmctl pretrain``: a thin layer over ``mdmctl.train.pretrain``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from mdmctl.cli.common import (
    AC_HELP,
    DEFAULT_DATA,
    PARALLEL_HELP,
    Attention,
    Objective,
    Parallel,
    _finite,
    _log,
    _tokenize_with_progress,
    app,
    cli_errors,
    launch_rank,
)
from mdmctl.cli.train_common import _render_train_summary, _with_progress


@app.command()
def pretrain(
    objective: Objective = typer.Option(
        Objective.mdm,
        "--objective",
        help="mdm (masked diffusion) or arm (autoregressive baseline).",
    ),
    size: str | None = typer.Option(
        None,
        "--size",
        help="Named size: tiny (default), mini, small, or an SMDM size (6M ... 2121M).",
    ),
    config: Path | None = typer.Option(
        None, "--config", help="TOML run file with [model] and [train] sections."
    ),
    data: Path | None = typer.Option(
        None,
        "--data",
        help="Tokenized corpus (mdmctl tokenize). Default: the built-in corpus, tokenized on first use.",
    ),
    out: Path | None = typer.Option(
        None, "--out", help="Run directory. Default: runs/<objective>-<size>."
    ),
    steps: int | None = typer.Option(None, "--steps", min=1, help="Optimizer steps."),
    tokens: int | None = typer.Option(
        None, "--tokens", min=1, help="Training tokens (instead of --steps)."
    ),
    flops: float | None = typer.Option(
        None, "--flops", help="Compute budget C = 6·N·D (instead of --steps).", callback=_finite
    ),
    batch_size: int | None = typer.Option(
        None, "--batch-size", min=1, help="Global batch in sequences."
    ),
    micro_batch_size: int | None = typer.Option(
        None, "--micro-batch-size", min=1, help="Sequences per forward (gradient accumulation)."
    ),
    seq_len: int | None = typer.Option(None, "--seq-len", min=8, help="Context length."),
    n_layers: int | None = typer.Option(None, "--n-layers", min=1),
    d_model: int | None = typer.Option(None, "--d-model", min=1),
    n_heads: int | None = typer.Option(None, "--n-heads", min=1),
    d_ff: int | None = typer.Option(None, "--d-ff", min=1),
    lr: float | None = typer.Option(None, "--lr", callback=_finite),
    warmup_steps: int | None = typer.Option(None, "--warmup-steps", min=0),
    var_len_prob: float | None = typer.Option(
        None,
        "--var-len-prob",
        min=0,
        max=1,
        help="MDM: probability of a variable-length batch.",
        callback=_finite,
    ),
    eps: float | None = typer.Option(
        None, "--eps", help="MDM: minimum masking probability.", callback=_finite
    ),
    doc_mask: bool | None = typer.Option(
        None, "--doc-mask/--no-doc-mask", help="Block-diagonal attention over packed documents."
    ),
    val_every: int | None = typer.Option(None, "--val-every", min=1),
    save_every: int | None = typer.Option(None, "--save-every", min=1),
    keep_last: int | None = typer.Option(None, "--keep-last", min=2),
    max_nonfinite_skips: int | None = typer.Option(None, "--max-nonfinite-skips", min=0),
    seed: int | None = typer.Option(None, "--seed"),
    device: str = typer.Option("auto", "--device", help="auto, cpu or cuda."),
    dtype: str = typer.Option(
        "auto", "--dtype", help="auto (bf16 on CUDA, fp32 on CPU), fp32 or bf16."
    ),
    attention: Attention = typer.Option(Attention.auto, "--attention", help="Attention kernel."),
    parallel: Parallel | None = typer.Option(None, "--parallel", help=PARALLEL_HELP),
    activation_checkpointing: bool | None = typer.Option(
        None, "--activation-checkpointing/--no-activation-checkpointing", help=AC_HELP
    ),
    resume: str = typer.Option(
        "auto",
        "--resume",
        help="auto (continue the run in --out if any), never, or a checkpoint path.",
    ),
    overwrite: bool = typer.Option(
        False, "--overwrite", help="Delete an existing run in --out first."
    ),
    verify_data: bool = typer.Option(
        False,
        "--verify-data",
        help="Also read every token and check it against the vocabulary (shards are always "
        "checked against corpus.json's sha256 once per run).",
    ),
    show_samples: int = typer.Option(
        3, "--show-samples", min=0, help="Samples printed in the summary."
    ),
    json_out: bool = typer.Option(False, "--json", help="Print the summary as JSON on stdout."),
) -> None:
    """Train an MDM (or the ARM baseline) from scratch."""
    with cli_errors():
        from mdmctl.config import ModelConfig, RunConfig, TrainConfig, load_toml

        file_cfg = load_toml(config) if config else {"model": {}, "train": {}}
        model_over = dict(file_cfg["model"])
        model_over.update(
            {
                k: v
                for k, v in dict(
                    seq_len=seq_len, n_layers=n_layers, d_model=d_model, n_heads=n_heads, d_ff=d_ff
                ).items()
                if v is not None
            }
        )
        model_over["objective"] = objective.value
        preset = model_over.pop("name", None)
        model_cfg = ModelConfig.from_name(size or preset or "tiny", **model_over)
        train_over = dict(file_cfg["train"])
        flags = dict(
            steps=steps,
            tokens=tokens,
            flops=flops,
            batch_size=batch_size,
            micro_batch_size=micro_batch_size,
            lr=lr,
            warmup_steps=warmup_steps,
            var_len_prob=var_len_prob,
            eps=eps,
            doc_mask=doc_mask,
            val_every=val_every,
            save_every=save_every,
            keep_last=keep_last,
            max_nonfinite_skips=max_nonfinite_skips,
            seed=seed,
            parallel=parallel.value if parallel else None,
            activation_checkpointing=activation_checkpointing,
        )
        if any(v is not None for v in (steps, tokens, flops)):
            for k in ("steps", "tokens", "flops"):
                train_over.pop(k, None)
        train_over.update({k: v for k, v in flags.items() if v is not None})
        train_cfg = TrainConfig.from_dict(train_over)
        data_dir = data or DEFAULT_DATA
        if data is None and not (DEFAULT_DATA / "corpus.json").is_file():
            import os

            from mdmctl.data.shards import TokenizeConfig
            from mdmctl.errors import ConfigError

            if int(os.environ.get("WORLD_SIZE", "1")) > 1:
                # Every rank would tokenize into the same folder at once.
                raise ConfigError(
                    f"no --data and no {DEFAULT_DATA}/corpus.json: under torchrun, run "
                    "'mdmctl tokenize' (or one 'mdmctl pretrain') first, or pass --data"
                )

            _log(f"no --data: tokenizing the built-in corpus into {DEFAULT_DATA} (once)")
            _tokenize_with_progress(TokenizeConfig(out=str(DEFAULT_DATA)))
        run = RunConfig(
            model=model_cfg,
            train=train_cfg,
            data=str(data_dir),
            out=str(out or Path("runs") / f"{objective.value}-{model_cfg.name}"),
            device=device,
            attention=attention.value,
            dtype=dtype,
        )
        result = _run_pretrain(run, resume, overwrite, verify_data)
        samples = (
            _summary_samples(result, show_samples) if show_samples and launch_rank() == 0 else []
        )
        _render_train_summary(result, samples, json_out)


def _run_pretrain(run: Any, resume: str, overwrite: bool, verify_data: bool = False) -> Any:
    from mdmctl.train import pretrain as lib_pretrain

    return _with_progress(
        lambda on_step: lib_pretrain(
            run,
            resume=resume,
            overwrite=overwrite,
            verify_data=verify_data,
            on_step=on_step,
            log=_log,
        )
    )


def _summary_samples(result: Any, n: int) -> list[str]:
    from mdmctl.sampling import SampleConfig, sample_from_checkpoint

    if result.checkpoint is None:
        return []
    res = sample_from_checkpoint(
        SampleConfig(
            checkpoint=str(result.checkpoint),
            prompts=("",),
            num_samples=n,
            length=min(64, result.seq_len - 1),
            steps=min(64, result.seq_len - 1),
            sampler="ancestral",
            temperature=1.0,
            device=result.device,
        )
    )
    return [s.text for s in res.samples]
