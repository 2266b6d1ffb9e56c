"""The ``mdmctl`` command line: parse, validate, call one library function, render.

Heavy imports (torch, tokenizers, datasets) happen inside command bodies so ``--help`` stays fast.
User errors become one ``error: ...`` line on stderr and a typed exit code (docs/cli.md).
"""

from __future__ import annotations

import contextlib
import json
import math
import sys
from collections.abc import Iterator
from enum import Enum
from pathlib import Path
from typing import Any

import typer

from mdmctl.errors import ConfigError, MdmctlError

app = typer.Typer(
    name="mdmctl",
    help="Masked diffusion language models: tokenize, pretrain, sample, evaluate.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
    add_completion=False,
)
eval_app = typer.Typer(help="Evaluate a checkpoint.", no_args_is_help=True)
app.add_typer(eval_app, name="eval")

DEFAULT_DATA = Path("data/builtin")
_debug = False


class Objective(str, Enum):
    mdm = "mdm"
    arm = "arm"


class Attention(str, Enum):
    auto = "auto"
    xformers = "xformers"
    sdpa = "sdpa"


class SamplerName(str, Enum):
    ancestral = "ancestral"
    confidence = "confidence"


@contextlib.contextmanager
def cli_errors() -> Iterator[None]:
    """MdmctlError -> 'error: ...' + its exit code; Ctrl-C -> 130. Tracebacks only with --debug."""
    from mdmctl.log import console

    try:
        yield
    except MdmctlError as e:
        if _debug:
            raise
        console.print(f"[bold red]error:[/] {e}", markup=True, highlight=False, soft_wrap=True)
        raise typer.Exit(e.exit_code) from None
    except KeyboardInterrupt:
        console.print("interrupted")
        raise typer.Exit(130) from None


@app.callback()
def _root(
    debug: bool = typer.Option(False, "--debug", help="Show tracebacks for errors."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="More logging."),
) -> None:
    global _debug
    _debug = debug
    from mdmctl.log import setup_logging

    setup_logging(verbose)


def _finite(value: float | None) -> float | None:
    """Typer callback for float options: ``inf`` and ``nan`` parse as floats and pass Typer's
    ``min=`` checks (``nan < 0`` is false), then fail far from the option (``--lr inf``)."""
    if value is not None and not math.isfinite(value):
        raise typer.BadParameter(f"must be a finite number, got {value}")
    return value


def _log(msg: str) -> None:
    from mdmctl.log import info

    info(msg)


# --------------------------------------------------------------------------------------- tokenize
@app.command()
def tokenize(
    inputs: list[str] = typer.Argument(
        None,
        help="Text files or folders (.txt, .jsonl[.gz], .parquet). Default: the built-in corpus.",
    ),
    dataset: str | None = typer.Option(
        None, "--dataset", help="A datasets hub id instead of files."
    ),
    config: str | None = typer.Option(None, "--config", help="Hub dataset config name."),
    split: str = typer.Option("train", "--split", help="Hub dataset split."),
    text_field: str = typer.Option(
        "text", "--text-field", help="Field holding the text (jsonl, parquet, hub)."
    ),
    tokenizer: Path | None = typer.Option(
        None, "--tokenizer", help="Existing tokenizer.json; default: train a byte-level BPE."
    ),
    vocab_size: int | None = typer.Option(
        None,
        "--vocab-size",
        min=300,
        help="BPE vocabulary size when training [default: 1024 for the built-in corpus, else 4096].",
    ),
    eos_token: str | None = typer.Option(
        None, "--eos-token", help="Name of the end-of-text token in --tokenizer."
    ),
    val_fraction: float = typer.Option(
        0.01, "--val-fraction", help="Share of documents held out for validation.", callback=_finite
    ),
    shard_tokens: int = typer.Option(
        50_000_000, "--shard-tokens", min=1024, help="Tokens per shard file."
    ),
    max_docs: int | None = typer.Option(
        None, "--max-docs", min=1, help="Stop after this many documents."
    ),
    out: Path = typer.Option(DEFAULT_DATA, "--out", help="Output folder."),
    json_out: bool = typer.Option(False, "--json", help="Print corpus.json to stdout."),
) -> None:
    """Train or load a tokenizer and write packed token shards plus corpus.json."""
    with cli_errors():
        from mdmctl.data.readers import CorpusSpec
        from mdmctl.data.shards import TokenizeConfig
        from mdmctl.log import console

        spec = CorpusSpec(
            paths=tuple(inputs or ()),
            dataset=dataset,
            config=config,
            split=split,
            text_field=text_field,
        )
        cfg = TokenizeConfig(
            corpus=spec,
            out=str(out),
            tokenizer=str(tokenizer) if tokenizer else None,
            vocab_size=vocab_size,
            eos_token=eos_token,
            val_fraction=val_fraction,
            shard_tokens=shard_tokens,
            max_docs=max_docs,
        )
        manifest = _tokenize_with_progress(cfg)
        m = manifest.meta
        if json_out:
            print(json.dumps(m, indent=2))
        else:
            console.print(
                f"wrote {out}: {m['documents']} documents, {m['splits']['train']['tokens']:,} train / "
                f"{m['splits']['val']['tokens']:,} val tokens ({m['dtype']}), vocab "
                f"{m['tokenizer']['vocab_size']}, in {m['seconds']:.1f}s"
            )


def _tokenize_with_progress(cfg: Any) -> Any:
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    from mdmctl.data.shards import tokenize_corpus
    from mdmctl.log import console

    with Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        TimeElapsedColumn(),
        console=console,
        transient=True,
    ) as bar:
        task = bar.add_task(f"tokenizing {cfg.corpus.description}")

        def progress(docs: int, tokens: int) -> None:
            bar.update(task, description=f"tokenizing: {docs:,} documents, {tokens:,} tokens")

        return tokenize_corpus(cfg, progress=progress, log=_log)


# --------------------------------------------------------------------------------------- pretrain
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
        )
        if any(v is not None for v in (steps, tokens, flops)):
            for k in ("steps", "tokens", "flops"):
                train_over.pop(k, None)
        train_over.update({k: v for k, v in flags.items() if v is not None})
        train_cfg = TrainConfig.from_dict(train_over)
        data_dir = data or DEFAULT_DATA
        if data is None and not (DEFAULT_DATA / "corpus.json").is_file():
            from mdmctl.data.shards import TokenizeConfig

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
        samples = _summary_samples(result, show_samples) if show_samples else []
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


def _with_progress(fn: Any) -> Any:
    """Run a training call with a rich progress bar (ETA, loss, lr, tokens/s, val, MFU)."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
    )

    from mdmctl.log import console

    with Progress(
        TextColumn("[bold]train"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[status]}"),
        TimeRemainingColumn(),
        console=console,
        transient=False,
    ) as bar:
        task = bar.add_task("train", total=None, status="")
        last_val: dict[str, float] = {}

        def on_step(step: int, total: int, rec: dict[str, Any]) -> None:
            if "val_loss" in rec:
                last_val["v"] = rec["val_loss"]
            status = f"loss {rec['loss']:.3f}  lr {rec['lr']:.2e}  {rec['tokens_per_s']:.0f} tok/s"
            if "v" in last_val:
                status += f"  val {last_val['v']:.3f}"
            if "mfu" in rec:
                status += f"  MFU {rec['mfu']:.1%}"
            bar.update(task, total=total, completed=step, status=status)

        return fn(on_step)


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


def _render_train_summary(r: Any, samples: list[str], json_out: bool) -> None:
    from rich.table import Table

    from mdmctl.log import console

    summary = {
        "run_dir": str(r.run_dir),
        "checkpoint": str(r.checkpoint),
        "steps": r.steps,
        "tokens": r.tokens,
        "val_loss": r.val_loss,
        "val_loss_kind": r.val_loss_kind,
        "unigram_entropy": r.unigram_entropy,
        "train_loss": r.train_loss,
        "tokens_per_s": r.tokens_per_s,
        "seconds": r.seconds,
        "peak_rss_mb": r.peak_rss_mb,
        "n_params_non_embedding": r.n_params_non_embedding,
        "device": r.device,
        "attention": r.attention,
        "resumed_from": r.resumed_from,
        "nonfinite_skips": r.nonfinite_skips,
        "samples": samples,
    }
    if json_out:
        print(json.dumps(summary, indent=2))
        return
    t = Table(title="training summary", show_header=False)
    t.add_row("run", str(r.run_dir))
    t.add_row("checkpoint", str(r.checkpoint))
    t.add_row("steps / tokens", f"{r.steps:,} / {r.tokens:,}")
    if r.nonfinite_skips:
        # Skipped updates are silent in the loss curve: the summary must say the run had them.
        t.add_row("non-finite steps skipped", f"{r.nonfinite_skips:,} (no update applied)")
    t.add_row(f"val loss ({r.val_loss_kind})", f"{r.val_loss:.4f} nats/token")
    if r.unigram_entropy is not None:
        t.add_row("unigram entropy of the corpus", f"{r.unigram_entropy:.4f} nats/token")
        t.add_row("better than unigram by", f"{r.unigram_entropy - r.val_loss:+.4f} nats/token")
    t.add_row("throughput", f"{r.tokens_per_s:,.0f} tokens/s on {r.device} ({r.attention})")
    t.add_row("wall time", f"{r.seconds:.0f} s")
    t.add_row("peak RSS", f"{r.peak_rss_mb:,.0f} MB")
    console.print(t)
    for i, s in enumerate(samples):
        console.print(f"[bold]sample {i + 1}:[/] {s!r}", highlight=False)


# --------------------------------------------------------------------------------------- finetune
class SFTObjective(str, Enum):
    auto = "auto"
    conditional = "conditional"
    unconditional = "unconditional"


class SFTFormat(str, Enum):
    auto = "auto"
    prompt_response = "prompt-response"
    messages = "messages"
    gsm8k = "gsm8k"
    gsm8k_equations = "gsm8k-equations"


@app.command()
def finetune(
    init: Path = typer.Option(
        ..., "--init", help="Checkpoint to start from (step dir or run dir)."
    ),
    data: Path = typer.Option(
        ...,
        "--data",
        help="Examples: jsonl (prompt/response, prompt/completion, messages, question/answer) or GSM8K equations .txt.",
    ),
    out: Path | None = typer.Option(
        None, "--out", help="Run directory. Default: runs/<init run>-sft."
    ),
    sft_objective: SFTObjective = typer.Option(
        SFTObjective.auto,
        "--sft-objective",
        help="MDM: conditional (prompt never masked; default) or unconditional (whole sequence). ARM checkpoints: response cross-entropy.",
    ),
    cfg_dropout: float = typer.Option(
        0.0,
        "--cfg-dropout",
        help="Standard-CFG baseline: mask the whole prompt with this probability (MDM).",
        callback=_finite,
    ),
    fmt: SFTFormat = typer.Option(
        SFTFormat.auto, "--format", help="Data format; auto detects by fields."
    ),
    prompt_field: str = typer.Option("prompt", "--prompt-field"),
    response_field: str | None = typer.Option(
        None, "--response-field", help="Default: 'completion' if present, else 'response'."
    ),
    val_fraction: float = typer.Option(
        0.05,
        "--val-fraction",
        help="Share of examples held out for the conditional validation loss.",
        callback=_finite,
    ),
    epochs: float | None = typer.Option(
        None,
        "--epochs",
        help="Passes over the examples (default 1 unless --steps).",
        callback=_finite,
    ),
    steps: int | None = typer.Option(None, "--steps", min=1),
    batch_size: int = typer.Option(32, "--batch-size", min=1, help="Examples per optimizer step."),
    micro_batch_size: int | None = typer.Option(None, "--micro-batch-size", min=1),
    lr: float | None = typer.Option(None, "--lr", callback=_finite),
    warmup_steps: int | None = typer.Option(None, "--warmup-steps", min=0),
    seq_len: int | None = typer.Option(
        None, "--seq-len", min=8, help="Context for fine-tuning (at most the checkpoint's)."
    ),
    overlong: str = typer.Option(
        "drop",
        "--overlong",
        help="Examples longer than the context: drop (counted and reported) or error.",
    ),
    batching: str = typer.Option(
        "random",
        "--batching",
        help="random (SMDM; the MDM learns to stop from the eos padding) or sorted (less padding; ARM).",
    ),
    pad_to: str = typer.Option(
        "auto",
        "--pad-to",
        help="Pad rows with eos to N tokens, 'context', or 'batch' (each micro-batch's longest row). auto: context for GSM8K formats (SMDM: 256), else batch.",
    ),
    val_every: int = typer.Option(200, "--val-every", min=1),
    save_every: int = typer.Option(500, "--save-every", min=1),
    keep_last: int = typer.Option(2, "--keep-last", min=2),
    seed: int = typer.Option(0, "--seed"),
    device: str = typer.Option("auto", "--device"),
    dtype: str = typer.Option("auto", "--dtype"),
    attention: Attention = typer.Option(Attention.auto, "--attention"),
    resume: str = typer.Option("auto", "--resume"),
    overwrite: bool = typer.Option(False, "--overwrite"),
    json_out: bool = typer.Option(False, "--json"),
) -> None:
    """Fine-tune a checkpoint on prompt/response data (SFT)."""
    with cli_errors():
        from mdmctl.config import FinetuneConfig, TrainConfig

        train = TrainConfig.from_dict(
            {
                k: v
                for k, v in dict(
                    steps=steps,
                    batch_size=batch_size,
                    micro_batch_size=micro_batch_size,
                    lr=lr,
                    warmup_steps=warmup_steps,
                    val_every=val_every,
                    save_every=save_every,
                    keep_last=keep_last,
                    seed=seed,
                ).items()
                if v is not None
            }
        )
        run_name = (
            init.parent.parent.name if init.name.startswith("step-") else init.name
        ) or "run"
        fcfg = FinetuneConfig(
            init=str(init),
            data=str(data),
            out=str(out or Path("runs") / f"{run_name}-sft"),
            train=train,
            objective=sft_objective.value,
            cfg_dropout=cfg_dropout,
            format=fmt.value,
            prompt_field=prompt_field,
            response_field=response_field,
            val_fraction=val_fraction,
            epochs=epochs,
            overlong=overlong,
            batching=batching,
            pad_to=pad_to,
            seq_len=seq_len,
            device=device,
            attention=attention.value,
            dtype=dtype,
        )
        from mdmctl.train import finetune as lib_finetune

        result = _with_progress(
            lambda on_step: lib_finetune(
                fcfg, resume=resume, overwrite=overwrite, on_step=on_step, log=_log
            )
        )
        _render_train_summary(result, [], json_out)


# ----------------------------------------------------------------------------------------- sample
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


# ------------------------------------------------------------------------------------------- eval
@eval_app.command("ppl")
def eval_ppl(
    checkpoint: Path | None = typer.Option(
        None, "--checkpoint", help="Step dir or run dir. Default: the newest run."
    ),
    data: str | None = typer.Option(
        None, "--data", help="Tokenized corpus dir or text files. Default: the run's corpus."
    ),
    split: str = typer.Option("val", "--split", help="Corpus split to score."),
    mc_samples: int = typer.Option(
        32, "--mc-samples", min=1, help="MDM: stratified t samples per window."
    ),
    batch_size: int = typer.Option(8, "--batch-size", min=1),
    max_windows: int | None = typer.Option(None, "--max-windows", min=1),
    seed: int = typer.Option(0, "--seed"),
    text_field: str = typer.Option("text", "--text-field"),
    device: str = typer.Option("auto", "--device"),
    attention: Attention = typer.Option(Attention.auto, "--attention"),
    json_out: bool = typer.Option(False, "--json"),
) -> None:
    """Held-out perplexity: exact for an ARM, an ELBO upper bound for an MDM."""
    with cli_errors():
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
            log=_log,
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


def main() -> None:
    try:
        app()
    except MdmctlError as e:  # raised outside a command body (should not happen)
        print(f"error: {e}", file=sys.stderr)
        sys.exit(e.exit_code)


@eval_app.command("gsm8k")
def eval_gsm8k(
    checkpoint: Path | None = typer.Option(
        None, "--checkpoint", help="Step dir or run dir. Default: the newest run."
    ),
    data: str | None = typer.Option(
        None,
        "--data",
        help="GSM8K jsonl (question / answer). Default: the hub's openai/gsm8k test split (online only).",
    ),
    predictions: Path | None = typer.Option(
        None,
        "--predictions",
        help="Re-score generations from a jsonl (one line per problem) without loading a model.",
    ),
    out: Path | None = typer.Option(
        None,
        "--out",
        help="Per-problem jsonl: generation, prediction, verdict. Default: eval-gsm8k.jsonl beside the checkpoint run.",
    ),
    limit: int | None = typer.Option(None, "--limit", min=1, help="First N problems only."),
    fewshot: int = typer.Option(
        0, "--fewshot", min=0, help="Worked examples before each question."
    ),
    fewshot_data: str | None = typer.Option(
        None, "--fewshot-data", help="Where the few-shot examples come from (e.g. the train split)."
    ),
    total_length: int | None = typer.Option(
        None,
        "--total-length",
        min=2,
        help="Each stage's canvas: prompt + generated tokens, capped at the model context. Default 256 (SMDM --length 256).",
    ),
    length: int | None = typer.Option(
        None,
        "--length",
        min=1,
        help="Generate exactly this many tokens per stage instead of filling --total-length.",
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
        None, "--answer-length", min=1, help="Stage 2 only: generate this many tokens."
    ),
    sampler: SamplerName = typer.Option(SamplerName.confidence, "--sampler"),
    temperature: float = typer.Option(0.1, "--temperature", min=0, callback=_finite),
    cfg: float = typer.Option(
        0.1,
        "--cfg",
        min=0,
        help="Unsupervised CFG scale (SMDM --cfg1 0.1; ARM checkpoints: 0).",
        callback=_finite,
    ),
    answer_cfg: float | None = typer.Option(
        None,
        "--answer-cfg",
        min=0,
        help="Stage 2's CFG scale (SMDM --cfg2 0.1). Default: --cfg.",
        callback=_finite,
    ),
    batch_size: int = typer.Option(32, "--batch-size", min=1),
    seed: int = typer.Option(0, "--seed"),
    device: str = typer.Option("auto", "--device"),
    attention: Attention = typer.Option(Attention.auto, "--attention"),
    json_out: bool = typer.Option(False, "--json"),
) -> None:
    """GSM8K accuracy: generate, extract the final number, exact match."""
    with cli_errors():
        from mdmctl.evaluation.gsm8k import evaluate_gsm8k
        from mdmctl.sampling import SampleConfig

        if length is not None and total_length is not None:
            raise ConfigError("give --total-length (the canvas) or --length (generated tokens)")
        scfg = SampleConfig(
            checkpoint=str(checkpoint) if checkpoint else None,
            steps=steps,
            sampler=sampler.value,
            temperature=temperature,
            cfg=cfg,
            seed=seed,
            batch_size=batch_size,
            device=device,
            attention=attention.value,
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
            log=_log,
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
        if json_out:
            print(json.dumps(d, indent=2))
        else:
            per = f", {r.seconds_per_problem:.2f} s/problem" if r.seconds_per_problem else ""
            print(f"gsm8k accuracy {r.accuracy:.4f} ± {r.stderr:.4f} ({r.correct}/{r.n}{per})")
            shares = ", ".join(
                f"{k.replace('_', ' ')} {v:.1%}" for k, v in r.compliance.items() if v is not None
            )
            print(f"format: {shares}")


@eval_app.command("reverse-curse")
def eval_reverse_curse(
    checkpoint: Path | None = typer.Option(
        None, "--checkpoint", help="Step dir or run dir. Default: the newest run."
    ),
    data_dir: Path = typer.Option(
        ...,
        "--data-dir",
        help="Folder with the reversal-curse test files (e.g. ../shared/data/reversal_curse).",
    ),
    out: Path | None = typer.Option(None, "--out", help="Per-example jsonl."),
    limit: int | None = typer.Option(None, "--limit", min=1, help="First N prompts of each file."),
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
    steps: int = typer.Option(32, "--steps", min=1),
    sampler: SamplerName = typer.Option(SamplerName.confidence, "--sampler"),
    temperature: float = typer.Option(0.0, "--temperature", min=0, callback=_finite),
    cfg: float = typer.Option(
        0.8,
        "--cfg",
        min=0,
        help="Unsupervised CFG (SMDM: 0.8; ARM checkpoints: 0).",
        callback=_finite,
    ),
    batch_size: int = typer.Option(64, "--batch-size", min=1),
    seed: int = typer.Option(0, "--seed"),
    device: str = typer.Option("auto", "--device"),
    attention: Attention = typer.Option(Attention.auto, "--attention"),
    json_out: bool = typer.Option(False, "--json"),
) -> None:
    """Reverse-curse accuracy and BLEU in the trained and the reverse direction."""
    with cli_errors():
        from rich.table import Table

        from mdmctl.evaluation.reverse_curse import evaluate_reverse_curse
        from mdmctl.log import console
        from mdmctl.sampling import SampleConfig

        scfg = SampleConfig(
            checkpoint=str(checkpoint) if checkpoint else None,
            steps=steps,
            sampler=sampler.value,
            temperature=temperature,
            cfg=cfg,
            seed=seed,
            batch_size=batch_size,
            device=device,
            attention=attention.value,
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
            splits=tuple(x.strip() for x in splits.split(",") if x.strip()),
            log=_log,
        )
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
        console.print(t)


# ------------------------------------------------------------------------- zero-shot benchmarks
def _render_zero_shot(results: list[Any], json_out: bool) -> None:
    from rich.table import Table

    from mdmctl.log import console

    if json_out:
        print(json.dumps([r.to_dict() for r in results], indent=2))
        return
    t = Table(title="zero-shot")
    for col in ("task", "n", "metric", "value", "estimator", "cfg", "requests/s"):
        t.add_column(col)
    for r in results:
        est = r.estimator + (f" x{r.mc_samples}" if r.mc_samples else "")
        for i, (m, v) in enumerate(r.metrics.items()):
            bound = " (bound)" if m == "perplexity" and r.estimator == "mc" else ""
            t.add_row(
                r.task if i == 0 else "",
                str(r.n) if i == 0 else "",
                m + bound,
                f"{v:.4g} ± {r.stderr[m]:.2g}"
                if m == "perplexity"
                else f"{v:.4f} ± {r.stderr[m]:.4f}",
                est if i == 0 else "",
                f"{r.cfg:g}" if i == 0 else "",
                f"{r.requests_per_s:.1f}" if i == 0 else "",
            )
    console.print(t)
    for r in results:
        if r.truncated:
            console.print(
                f"{r.task}: {r.truncated} of {r.requests} requests cut on the left to fit the "
                "model's context",
                highlight=False,
            )


def _zero_shot(names: list[str], opts: dict[str, Any], out: Path | None, json_out: bool) -> None:
    with cli_errors():
        from mdmctl.evaluation.zero_shot import ZeroShotConfig, evaluate_tasks

        cfg = ZeroShotConfig(
            checkpoint=str(opts["checkpoint"]) if opts["checkpoint"] else None,
            data=opts["data"],
            limit=opts["limit"],
            estimator=opts["estimator"].value if opts["estimator"] else None,
            mc_samples=opts["mc_samples"],
            cfg=opts["cfg"],
            batch_size=opts["batch_size"],
            seed=opts["seed"],
            device=opts["device"],
            attention=opts["attention"].value,
        )
        results = evaluate_tasks(names, cfg, out=str(out) if out else None, log=_log)
        _render_zero_shot(results, json_out)


class EstimatorName(str, Enum):
    mc = "mc"
    chain_rule = "chain-rule"


def _zero_shot_command(name: str, help_text: str) -> None:
    def command(
        checkpoint: Path | None = typer.Option(
            None, "--checkpoint", help="Step dir or run dir. Default: the newest run."
        ),
        data: str | None = typer.Option(
            None,
            "--data",
            help="Task jsonl in lm-eval's formatting (../shared/data/benchmarks layout) or its "
            "folder. Default: the hub dataset lm-eval uses (online only).",
        ),
        limit: int | None = typer.Option(None, "--limit", min=1, help="First N documents."),
        estimator: EstimatorName | None = typer.Option(
            None, "--estimator", help="MDM: mc or chain-rule. Default: the paper's per task."
        ),
        mc_samples: int = typer.Option(
            128, "--mc-samples", "--mc-num", min=1, help="MDM mc: stratified t samples."
        ),
        cfg: float | None = typer.Option(
            None,
            "--cfg",
            help="MDM unsupervised CFG scale. Default: the paper's per task.",
            callback=_finite,
        ),
        batch_size: int = typer.Option(32, "--batch-size", min=1, help="Rows per forward."),
        seed: int = typer.Option(0, "--seed"),
        device: str = typer.Option("auto", "--device"),
        attention: Attention = typer.Option(Attention.auto, "--attention"),
        out: Path | None = typer.Option(
            None, "--out", help="Per-document scores: .jsonl, or a .json results file."
        ),
        json_out: bool = typer.Option(False, "--json"),
    ) -> None:
        opts = dict(locals())
        _zero_shot([name], opts, out, json_out)

    command.__doc__ = help_text
    eval_app.command(name)(command)


def _register_zero_shot() -> None:
    from mdmctl.evaluation.benchmarks import TASKS

    for t in TASKS.values():
        hub = "hub only" if t.name == "race" else f"shared file {t.file}"
        _zero_shot_command(
            t.name, f"{t.name}: zero-shot {', '.join(t.metrics)} (lm-eval formatting; {hub})."
        )


_register_zero_shot()


@eval_app.command("all")
def eval_all(
    checkpoint: Path | None = typer.Option(
        None, "--checkpoint", help="Step dir or run dir. Default: the newest run."
    ),
    data: str | None = typer.Option(
        None,
        "--data",
        help="Folder with the task files (e.g. ../shared/data/benchmarks). Default: the hub.",
    ),
    tasks: str | None = typer.Option(
        None,
        "--tasks",
        help="Comma-separated task names. Default: every task (with --data: those with a file).",
    ),
    limit: int | None = typer.Option(None, "--limit", min=1, help="First N documents per task."),
    estimator: EstimatorName | None = typer.Option(
        None, "--estimator", help="MDM: mc or chain-rule for every task. Default: per task."
    ),
    mc_samples: int = typer.Option(128, "--mc-samples", "--mc-num", min=1),
    cfg: float | None = typer.Option(
        None, "--cfg", help="MDM CFG for every task.", callback=_finite
    ),
    batch_size: int = typer.Option(32, "--batch-size", min=1),
    seed: int = typer.Option(0, "--seed"),
    device: str = typer.Option("auto", "--device"),
    attention: Attention = typer.Option(Attention.auto, "--attention"),
    out: Path = typer.Option(
        Path("eval-zero-shot.json"),
        "--out",
        help="One results file: metrics and per-document scores.",
    ),
    json_out: bool = typer.Option(False, "--json"),
) -> None:
    """Run the zero-shot suite and write one results file."""
    from mdmctl.evaluation.benchmarks import TASKS

    if data and not Path(data).is_dir():
        with cli_errors():
            raise ConfigError(f"--data: {data} is not a folder (eval all reads one file per task)")
    if tasks:
        names = [n.strip() for n in tasks.split(",") if n.strip()]
    elif data and Path(data).is_dir():
        names = [n for n, t in TASKS.items() if (Path(data) / t.file).is_file()]
    else:
        names = list(TASKS)
    opts = dict(locals())
    _zero_shot(names, opts, out, json_out)


@eval_app.command("lm-eval")
def eval_lm_eval(
    tasks: str = typer.Option(..., "--tasks", help="Comma-separated lm-eval task names."),
    checkpoint: Path | None = typer.Option(
        None, "--checkpoint", help="Step dir or run dir. Default: the newest run."
    ),
    model_args: str = typer.Option(
        "",
        "--model-args",
        help="key=value,... for the mdmctl model: estimator, mc_num, cfg, greedy, steps, "
        "sampler, temperature, max_gen_toks, seed, attention.",
    ),
    num_fewshot: int | None = typer.Option(None, "--num-fewshot", min=0),
    limit: float | None = typer.Option(
        None, "--limit", help="Documents per task (or a fraction).", callback=_finite
    ),
    batch_size: int = typer.Option(32, "--batch-size", min=1),
    device: str = typer.Option("auto", "--device"),
    include_path: Path | None = typer.Option(
        None, "--include-path", help="Folder of extra task YAMLs (e.g. tasks over local files)."
    ),
    output: Path | None = typer.Option(None, "--output", help="Write the results JSON here."),
    bootstrap_iters: int = typer.Option(
        100000, "--bootstrap-iters", min=0, help="lm-eval's bootstrap for non-mean metrics' s.e."
    ),
    json_out: bool = typer.Option(False, "--json"),
) -> None:
    """Any lm-evaluation-harness task through the mdmctl model (pip install 'mdmctl[eval]')."""
    with cli_errors():
        from mdmctl.evaluation.lm_eval_run import run_lm_eval

        res = run_lm_eval(
            tasks=[t.strip() for t in tasks.split(",") if t.strip()],
            checkpoint=str(checkpoint) if checkpoint else None,
            model_args=model_args,
            num_fewshot=num_fewshot,
            limit=limit,
            batch_size=batch_size,
            device=device,
            include_path=str(include_path) if include_path else None,
            output=str(output) if output else None,
            bootstrap_iters=bootstrap_iters,
        )
        if json_out:
            print(json.dumps(res["results"], indent=2, default=str))
        else:
            print(res["table"])
