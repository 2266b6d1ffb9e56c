"""``mdmctl export`` and ``mdmctl import``: an mdmctl checkpoint to the Hugging Face layout and
back, and SMDM's released safetensors files into mdmctl (docs/interop.md)."""

from __future__ import annotations

import shutil
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
from tokenizers import Tokenizer

from mdmctl import checkpoint as ckpt
from mdmctl.config import SMDM_SIZES, ModelConfig
from mdmctl.errors import CheckpointError, CompatibilityError, ConfigError, TokenizerError
from mdmctl.fileio import fsync_dir, is_write_failure, write_failure
from mdmctl.interop import families, files, hf, keys
from mdmctl.tokenizer import TokenizerInfo, info_from_file, prepare, tokenizer_file

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
_PICKLE = (".bin", ".pt", ".pth", ".ckpt", ".pkl")


@dataclass
class ExportResult:
    out: Path
    checkpoint: Path
    files: list[str]
    objective: str
    n_params: int
    seconds: float


@dataclass
class ImportResult:
    out: Path
    step_dir: Path
    layout: str  # "hf", "llada", "dream" or "smdm"
    model: dict
    added_tokens: list[str] = field(default_factory=list)
    added_rows: int = 0
    seconds: float = 0.0


def export_hf(
    checkpoint: str | None,
    out: Path | None,
    *,
    max_shard_size: str = "5GB",
    dtype: str = "float32",
    overwrite: bool = False,
) -> ExportResult:
    """Write a checkpoint as an HF folder: config, (sharded) weights, tokenizer, generation files.
    Written beside ``out`` and renamed into place: a failure leaves ``out`` as it was."""
    t0 = time.perf_counter()
    max_bytes = files.parse_size(max_shard_size)
    if dtype not in DTYPES:
        raise ConfigError(f"--dtype {dtype!r}: expected one of {', '.join(DTYPES)}")
    step_dir = ckpt.resolve_checkpoint(checkpoint)
    loaded = ckpt.load_checkpoint(step_dir)
    cfg = loaded.model_cfg
    record = files.import_record(step_dir)
    if record.get("layout") in ("llada", "dream"):
        return _export_family(record, step_dir, loaded, out, max_bytes, dtype, overwrite, t0)
    if cfg.qkv_bias or cfg.shift_logits:
        # Llama has no q/k/v-only biases (its attention_bias adds one to o_proj too) and no shift.
        raise CompatibilityError(
            f"{step_dir}: a model with q/k/v biases or shifted logits (Dream's features) has no "
            "Hugging Face Llama layout"
        )
    tok, info = info_from_file(step_dir / "tokenizer.json", cfg.objective == "mdm")
    if info.sha256 != loaded.tokenizer_sha256:
        raise CompatibilityError(f"{step_dir}: tokenizer.json does not match the weights")
    out = out or step_dir.parent.parent.with_name(step_dir.parent.parent.name + "-hf")
    tensors = {
        k: v.to(DTYPES[dtype]) for k, v in keys.to_hf(loaded.state_dict, cfg.n_layers).items()
    }
    special = hf.SpecialTokens.of(tok, info)
    step = int(step_dir.name.removeprefix(ckpt.STEP_PREFIX))
    with _staged(out, overwrite, step_dir) as tmp:
        written = files.write_weights(tensors, tmp, max_bytes)
        conf = hf.config_json(cfg, special, dtype=dtype, step=step, tokenizer_sha256=info.sha256)
        files.write_json(tmp / "config.json", conf)
        files.write_json(tmp / "generation_config.json", hf.generation_config_json(cfg, special))
        shutil.copyfile(step_dir / "tokenizer.json", tmp / "tokenizer.json")
        tok_conf, special_map = hf.tokenizer_files(cfg, special)
        files.write_json(tmp / "tokenizer_config.json", tok_conf)
        files.write_json(tmp / "special_tokens_map.json", special_map)
    names = [*written, "config.json", "generation_config.json", "tokenizer.json",
             "tokenizer_config.json", "special_tokens_map.json"]  # fmt: skip
    return ExportResult(out, step_dir, names, cfg.objective, cfg.n_params,
                        time.perf_counter() - t0)  # fmt: skip


def _export_family(record, step_dir, loaded, out, max_bytes, dtype, overwrite, t0) -> ExportResult:
    """An imported LLaDA or Dream back in its own layout: its weights under its names, its
    config.json and tokenizer_config.json as imported, the tokenizer."""
    kind, cfg = record["layout"], loaded.model_cfg
    tensors = {k: v.to(DTYPES[dtype])
               for k, v in families.write(kind, loaded.state_dict, cfg.n_layers).items()}  # fmt: skip
    out = out or step_dir.parent.parent.with_name(step_dir.parent.parent.name + f"-{kind}")
    with _staged(out, overwrite, step_dir) as tmp:
        written = files.write_weights(tensors, tmp, max_bytes)
        files.write_json(tmp / "config.json", record["source_config"])
        shutil.copyfile(step_dir / "tokenizer.json", tmp / "tokenizer.json")
        names = [*written, "config.json", "tokenizer.json"]
        if record.get("tokenizer_config"):
            files.write_json(tmp / "tokenizer_config.json", record["tokenizer_config"])
            names.append("tokenizer_config.json")
    return ExportResult(out, step_dir, names, cfg.objective, cfg.n_params,
                        time.perf_counter() - t0)  # fmt: skip


def import_model(
    source: Path,
    out: Path | None = None,
    *,
    tokenizer: str | None = None,
    objective: str | None = None,
    n_heads: int | None = None,
    seq_len: int | None = None,
    overwrite: bool = False,
    log: Callable[[str], None] = lambda msg: None,
) -> ImportResult:
    """An HF-layout folder or an SMDM ``.safetensors`` file as an mdmctl run folder ``out`` holding
    one weights-only checkpoint (step 0, or the step an mdmctl export came from)."""
    t0 = time.perf_counter()
    if seq_len is not None and seq_len < 1:
        raise ConfigError(f"--seq-len: must be >= 1, got {seq_len}")
    if not source.exists():
        raise CheckpointError(f"{source}: not found")
    if source.is_dir():
        tok_spec = tokenizer or str(source)
        layout, cfg, state, step = _read_hf(source, objective, seq_len)
    else:
        if tokenizer is None and source.suffix not in _PICKLE:
            raise ConfigError(
                f"{source}: SMDM weights carry no tokenizer; pass --tokenizer (SMDM uses "
                "TinyLlama's Llama-2 tokenizer: a tokenizer.json, its folder, or the hub name "
                "TinyLlama/TinyLlama-1.1B-intermediate-step-1431k-3T)"
            )
        layout, step, tok_spec = "smdm", 0, tokenizer
        cfg, state = _read_smdm(source, objective, n_heads, seq_len or 2048)
    tok_path = tokenizer_file(tok_spec)
    tok = Tokenizer.from_file(str(tok_path))
    info = prepare(tok, need_mask=cfg.objective == "mdm")
    for name in info.added:
        log(f"tokenizer had no {name!r}: added it as id {tok.token_to_id(name)}")
    if layout in ("llada", "dream") and info.mask_id != cfg.mask_id:
        # the weights learned one row as the mask; a tokenizer that puts it elsewhere would
        # feed them an ordinary token where they expect the mask
        raise CompatibilityError(
            f"{tok_path}: its mask token is id {info.mask_id}; {source / 'config.json'} says "
            f"mask_token_id {cfg.mask_id}: pass --tokenizer with the model's own tokenizer"
        )
    state, cfg, grown = _fit_vocab(state, cfg, info, log)
    out = out or Path("runs") / f"import-{source.stem if source.is_file() else source.name}"
    with tempfile.TemporaryDirectory() as scratch, _staged(out, overwrite, source) as tmp:
        if info.added:  # the tokenizer as mdmctl will use it, with the tokens it gained
            tok_path = Path(scratch) / "tokenizer.json"
            tok.save(str(tok_path))
        step_dir = _save(tmp, step, cfg, state, tok_path, info, source)
        record = {"source": str(source), "layout": layout, "tokenizer": str(tok_spec),
                  "added_tokens": list(info.added), "added_rows": grown}  # fmt: skip
        if layout in ("llada", "dream"):  # kept for the export back (and the chat template)
            record["source_config"] = files.read_json(source / "config.json")
            if (source / "tokenizer_config.json").is_file():
                record["tokenizer_config"] = files.read_json(source / "tokenizer_config.json")
        files.write_json(tmp / "config.json", {"import": record, "model": cfg.to_dict()})
    return ImportResult(out, out / "checkpoints" / step_dir.name, layout, cfg.to_dict(),
                        list(info.added), grown, time.perf_counter() - t0)  # fmt: skip


def _read_hf(folder: Path, objective: str | None, seq_len: int | None):
    """(layout, config without vocabulary, mdmctl state dict, step) of an HF-layout folder:
    ``hf`` (Llama, mdmctl's export), ``llada`` or ``dream``."""
    conf = files.read_json(folder / "config.json")
    kind = families.family(conf)
    if kind is not None:
        if objective not in (None, "mdm"):
            raise ConfigError(f"--objective {objective}: {folder} holds a {kind} MDM")
        weights = files.read_weights(folder)
        cfg, state = families.read(kind, conf, folder / "config.json", weights, seq_len)
        return kind, cfg, state, 0
    mine = conf.get("mdmctl") or {}
    objective = objective or mine.get("objective") or conf.get("objective") or "arm"
    if objective not in ("mdm", "arm"):
        raise ConfigError(f"--objective {objective!r}: expected mdm or arm")
    if mine.get("objective") and objective != mine["objective"]:
        raise ConfigError(f"--objective {objective}: {folder} holds an mdmctl "
                          f"{mine['objective'].upper()}")  # fmt: skip
    cfg = hf.model_config_from_hf(
        conf, folder / "config.json", objective=objective, seq_len=seq_len
    )
    state = keys.from_hf(files.read_weights(folder), cfg.n_layers)
    if conf.get("mask_token_id") is not None and objective == "mdm":
        cfg = replace(cfg, vocab_size=0, mask_id=int(conf["mask_token_id"]))
    return "hf", cfg, state, int(mine.get("step", 0))


def _read_smdm(path: Path, objective: str | None, n_heads: int | None, seq_len: int):
    """(config, mdmctl state dict) of an SMDM file; the size is found from the tensor shapes."""
    if path.suffix in _PICKLE:
        raise CheckpointError(f"{path}: a pickle file; mdmctl reads only safetensors")
    if not path.is_file():
        raise CheckpointError(f"{path}: not found")
    sm, _ = files.read_file(path)
    if "transformer.wte.weight" not in sm:
        hint = " (an HF layout: import its folder)" if "model.embed_tokens.weight" in sm else ""
        raise CompatibilityError(f"{path}: no transformer.wte.weight, not an SMDM checkpoint{hint}")
    n_layers = keys.count_layers(sm, "transformer.h.")
    keys.check_smdm(sm, n_layers)
    emb_rows, d = sm["transformer.wte.weight"].shape
    head_rows = sm["lm_head.weight"].shape[0]
    d_ff = sm["transformer.h.0.mlp.swiglu.w1.weight"].shape[0]
    name = hf.smdm_size_name(n_layers, d, d_ff)
    if name == "custom" and n_heads is None:
        raise ConfigError(
            f"{path}: {n_layers} layers, width {d}, MLP {d_ff} is no SMDM size; pass --n-heads"
        )
    if name != "custom" and n_heads not in (None, SMDM_SIZES[name][2]):
        raise ConfigError(f"--n-heads {n_heads}: SMDM's {name} has {SMDM_SIZES[name][2]} heads")
    heads = n_heads or SMDM_SIZES[name][2]
    if d % heads or (d // heads) % 2:
        raise ConfigError(f"--n-heads {heads}: must divide the width {d} into an even head size")
    # SMDM's MDM embeds one more token than it predicts: the mask, id = head rows (32000).
    found = "mdm" if emb_rows == head_rows + 1 else "arm" if emb_rows == head_rows else None
    if found is None:
        raise CompatibilityError(f"{path}: embedding {emb_rows} rows, head {head_rows}: neither "
                                 "an SMDM ARM (equal) nor an MDM (one more: the mask)")  # fmt: skip
    if objective not in (None, found):
        raise ConfigError(f"--objective {objective}: {path} holds an SMDM {found.upper()}")
    state = keys.from_smdm(sm, n_layers, heads)
    if found == "mdm":  # the head gains the mask's row; its logit is set to -inf at every forward
        state["head.weight"] = torch.cat([state["head.weight"], state["head.weight"][:1] * 0])
    mask_id = head_rows if found == "mdm" else -1
    cfg = ModelConfig(name=name, objective=found, n_layers=n_layers, d_model=d, n_heads=heads,
                      d_ff=d_ff, seq_len=seq_len, mask_id=mask_id)  # fmt: skip
    return cfg, state


def _fit_vocab(state, cfg: ModelConfig, info: TokenizerInfo, log):
    """Size the embedding and head to the tokenizer (rows for tokens it gained) and set the ids."""
    rows = state["tok_emb.weight"].shape[0]
    if cfg.objective == "mdm":
        if cfg.mask_id >= 0 and info.mask_id != cfg.mask_id:
            raise TokenizerError(f"the weights' mask id is {cfg.mask_id}, the tokenizer's mask "
                                 f"token has id {info.mask_id}")  # fmt: skip
    vocab = max(rows, info.vocab_size)
    grown = vocab - rows
    if grown:
        emb, head = state["tok_emb.weight"], state["head.weight"]
        # New input rows start at the mean embedding (a neutral token); new output rows at zero.
        new_emb = emb.mean(0, keepdim=True).expand(grown, -1)
        new_head = head.new_zeros(grown, head.shape[1])
        state = {**state, "tok_emb.weight": torch.cat([emb, new_emb]),
                 "head.weight": torch.cat([head, new_head])}  # fmt: skip
        log(f"tokenizer has {info.vocab_size} tokens, the weights {rows} rows: added {grown} "
            "(embedding: the mean row; head: zeros)")  # fmt: skip
    mask_id = info.mask_id if cfg.objective == "mdm" else -1
    return state, replace(cfg, vocab_size=vocab, mask_id=mask_id), grown


def _save(tmp: Path, step: int, cfg, state, tok_path: Path, info: TokenizerInfo, source: Path):
    from mdmctl.model import Transformer

    model = Transformer(cfg)
    ckpt.load_weights(model, state, source)  # strict: every name and shape checked
    return ckpt.save_checkpoint(
        tmp, step, model=model, model_cfg=cfg, tokenizer_path=tok_path,
        tokenizer_sha256=info.sha256, keep_last=1,
    )  # fmt: skip


@contextmanager
def _staged(out: Path, overwrite: bool, source: Path) -> Iterator[Path]:
    """A fresh folder beside ``out``, renamed to ``out`` when the block succeeds (an existing
    ``out`` is replaced only with ``overwrite``, and only then); removed when it fails, with
    ``out`` as it was. Write failures are ``OutputError`` (exit 4)."""
    _check_out(out, overwrite, source)
    tmp = out.with_name(f".tmp-{out.name}-{uuid.uuid4().hex[:8]}")
    old = out.with_name(f".old-{out.name}-{uuid.uuid4().hex[:8]}")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp.mkdir()
        yield tmp
        fsync_dir(tmp)
        if out.exists():
            out.rename(old)
        tmp.rename(out)
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if old.exists() and not out.exists():
            old.rename(out)  # put the previous folder back
        if is_write_failure(e):
            raise write_failure(e, out) from None
        raise
    shutil.rmtree(old, ignore_errors=True)


def _check_out(out: Path, overwrite: bool, source: Path) -> None:
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out}: exists and is not a folder")
    if out.exists() and not overwrite:
        raise ConfigError(f"--out {out}: exists; pass --overwrite to replace it")
    o, src = out.resolve(), source.resolve()
    if o == src or o in src.parents:
        raise ConfigError(f"--out {out}: holds the source {source}; choose another folder")
