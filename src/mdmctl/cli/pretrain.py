"""``mdmctl pretrain``: a thin layer over ``mdmctl.train.pretrain``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from mdmctl.cli.common import (
    AC_HELP,
    DEFAULT_DATA,
    OVERWRITE_HELP,
    PARALLEL_HELP,
    RESUME_HELP,
    WARMUP_HELP,
    Attention,
    Objective,
    Parallel,
    app,
    attention_option,
    cli_errors,
    device_option,
    dtype_option,
    finite_option,
    json_option,
    launch_rank,
    log_info,
    tokenize_with_progress,
)
from mdmctl.cli.train_report import after_training, render_train_summary, with_train_progress


@app.command()
def pretrain(
    objective: Objective | None = typer.Option(
        None,
        "--objective",
        help="mdm (masked diffusion) or arm (autoregressive baseline). Default: the --config "
        "file's [model] objective, else mdm.",
    ),
    size: str | None = typer.Option(
        None,
        "--size",
        help="Named size: tiny, mini, small (CPU sizes) or an SMDM size (6M ... 2121M). "
        "Default: tiny (or the --config file's [model] name).",
    ),
    config: Path | None = typer.Option(
        None,
        "--config",
        help="TOML run file with [model] and [train] sections; options given override it. "
        "Default: none.",
    ),
    data: Path | None = typer.Option(
        None,
        "--data",
        help="Tokenized corpus (mdmctl tokenize). Default: data/builtin, the built-in corpus "
        "(tokenized there on first use).",
    ),
    out: Path | None = typer.Option(
        None, "--out", help="Run directory. Default: runs/<objective>-<size>-<data folder name>."
    ),
    steps: int | None = typer.Option(
        None,
        "--steps",
        min=1,
        help="Optimizer steps. Default: 2000 for the CPU sizes (tiny, mini, small), 1000 for "
        "SMDM sizes.",
    ),
    tokens: int | None = typer.Option(
        None,
        "--tokens",
        min=1,
        help="Training tokens, rounded up to whole steps (instead of --steps). Default: none.",
    ),
    flops: float | None = typer.Option(
        None,
        "--flops",
        help="Compute budget C = 6·N·D, N non-embedding parameters (instead of --steps). "
        "Default: none.",
        callback=finite_option,
    ),
    batch_size: int | None = typer.Option(
        None, "--batch-size", min=1, help="Global batch in sequences. Default: 64."
    ),
    micro_batch_size: int | None = typer.Option(
        None,
        "--micro-batch-size",
        min=1,
        help="Sequences per forward (gradient accumulation). Default: --batch-size (under "
        "torchrun: --batch-size / processes).",
    ),
    seq_len: int | None = typer.Option(
        None,
        "--seq-len",
        min=8,
        help="Context length. Default: the size's (tiny 64, mini and small 256, SMDM sizes 2048).",
    ),
    n_layers: int | None = typer.Option(
        None, "--n-layers", min=1, help="Transformer blocks. Default: the size's."
    ),
    d_model: int | None = typer.Option(
        None, "--d-model", min=1, help="Model width. Default: the size's."
    ),
    n_heads: int | None = typer.Option(
        None, "--n-heads", min=1, help="Attention heads. Default: the size's."
    ),
    d_ff: int | None = typer.Option(
        None, "--d-ff", min=1, help="MLP hidden width. Default: the size's."
    ),
    lr: float | None = typer.Option(
        None,
        "--lr",
        help="Peak learning rate. Default: 3e-3 for the CPU sizes (tiny, mini, small), 2e-4 "
        "(SMDM's) for SMDM sizes.",
        callback=finite_option,
    ),
    warmup_steps: int | None = typer.Option(
        None,
        "--warmup-steps",
        min=0,
        help=WARMUP_HELP,
    ),
    var_len_prob: float | None = typer.Option(
        None,
        "--var-len-prob",
        min=0,
        max=1,
        help="MDM: probability of a variable-length batch. Default: 0.01.",
        callback=finite_option,
    ),
    eps: float | None = typer.Option(
        None,
        "--eps",
        help="MDM: minimum masking probability, p = (1 - eps)·t + eps. Default: 1e-3.",
        callback=finite_option,
    ),
    doc_mask: bool | None = typer.Option(
        None,
        "--doc-mask/--no-doc-mask",
        help="Block-diagonal attention over packed documents. Default: off.",
    ),
    val_every: int | None = typer.Option(
        None, "--val-every", min=1, help="Validate every N steps (and at the end). Default: 200."
    ),
    save_every: int | None = typer.Option(
        None,
        "--save-every",
        min=1,
        help="Save a checkpoint every N steps (and at the end). Default: 500.",
    ),
    keep_last: int | None = typer.Option(
        None, "--keep-last", min=2, help="Checkpoints kept. Default: 2."
    ),
    max_nonfinite_skips: int | None = typer.Option(
        None,
        "--max-nonfinite-skips",
        min=0,
        help="Skip up to N steps with a non-finite loss or gradient instead of stopping "
        "(exit 5). Default: 0.",
    ),
    seed: int | None = typer.Option(
        None, "--seed", help="Data order and every masking draw derive from it. Default: 0."
    ),
    device: str = device_option(),
    dtype: str = dtype_option(),
    attention: Attention = attention_option(),
    parallel: Parallel | None = typer.Option(
        None, "--parallel", help=PARALLEL_HELP + " Default: auto."
    ),
    activation_checkpointing: bool | None = typer.Option(
        None,
        "--activation-checkpointing/--no-activation-checkpointing",
        help=AC_HELP + " Default: off.",
    ),
    resume: str = typer.Option("auto", "--resume", help=RESUME_HELP),
    overwrite: bool = typer.Option(False, "--overwrite", help=OVERWRITE_HELP),
    verify_data: bool = typer.Option(
        False,
        "--verify-data",
        help="Also read every token and check it against the vocabulary (shards are always "
        "checked against corpus.json's sha256 once per run).",
    ),
    show_samples: int = typer.Option(
        3, "--show-samples", min=0, help="Samples printed in the summary."
    ),
    json_out: bool = json_option("Print the summary as JSON on stdout."),
) -> None:
    """Train an MDM (or the ARM baseline) from scratch.

    Model and training options not given take the --config file's value if it sets one, else
    the default in their help.
    """
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
        # A --config file's [model] objective counts unless --objective is given.
        from_file = model_over.get("objective", "mdm")
        model_over["objective"] = objective.value if objective else from_file
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

            log_info(f"no --data: tokenizing the built-in corpus into {DEFAULT_DATA} (once)")
            tokenize_with_progress(TokenizeConfig(out=str(DEFAULT_DATA)))
        run = RunConfig(
            model=model_cfg,
            train=train_cfg,
            data=str(data_dir),
            # Everything that names a natural run: a second run on other data gets its own folder.
            out=str(
                out or Path("runs") / f"{model_cfg.objective}-{model_cfg.name}-{data_dir.name}"
            ),
            device=device,
            attention=attention.value,
            dtype=dtype,
        )
        result = _run_pretrain(run, resume, overwrite, verify_data)
        samples = (
            _summary_samples(result, show_samples) if show_samples and launch_rank() == 0 else []
        )
        render_train_summary(result, samples, json_out)
        after_training(result, json_out)


def _run_pretrain(run: Any, resume: str, overwrite: bool, verify_data: bool = False) -> Any:
    from mdmctl.train import pretrain as lib_pretrain

    return with_train_progress(
        lambda on_step: lib_pretrain(
            run,
            resume=resume,
            overwrite=overwrite,
            verify_data=verify_data,
            on_step=on_step,
            log=log_info,
        )
    )


def _summary_samples(result: Any, n: int) -> list[str]:
    from mdmctl.sampling import SampleConfig, sample_from_checkpoint

    if result.checkpoint is None:
        return []
    res = sample_from_checkpoint(
        SampleConfig.create(
            checkpoint=str(result.checkpoint),
            prompts=("",),
            num_samples=n,
            length=min(64, result.seq_len - 1),
            steps=min(64, result.seq_len - 1),
            defaults=frozenset({("steps", min(64, result.seq_len - 1))}),  # an ARM: none
            # Confidence order (mdmctl sample's default): on the Quick start's model, 80% of the
            # generated words are corpus words, against 59% with ancestral sampling
            # (docs/benchmarks.md, "First run").
            sampler="confidence",
            temperature=1.0,
            device=result.device,
        )
    )
    return [s.text for s in res.samples]
