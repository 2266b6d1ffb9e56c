"""Atomic, verified checkpoints (docs/formats.md; reliability protocol).

A step directory is written as ``checkpoints/.tmp-step-NNNNNNNN-<uuid>/`` (each file fsynced,
``MANIFEST.json`` with sizes and sha256 written last) and committed by one ``os.replace``. Retention
runs only after a commit. Loading verifies sizes (truncation) and sha256 (flipped bytes) first; a
directory without a manifest is incomplete. Only safetensors and JSON are ever read: no pickle.
"""

from __future__ import annotations

import json
import os
import shutil
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from mdmctl import __version__
from mdmctl.config import ModelConfig
from mdmctl.errors import CheckpointError, CompatibilityError, ConfigError
from mdmctl.fileio import (
    fsync_dir,
    fsync_file,
    is_no_space,
    is_write_failure,
    sha256_file,
    umask,
)

FORMAT_VERSION = 1
WEIGHT_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
"""The weights' type for inference (``--dtype`` of the generating commands)."""
STEP_PREFIX = "step-"
ARCH_FIELDS = (
    "objective",
    "n_layers",
    "d_model",
    "n_heads",
    "d_ff",
    "vocab_size",
    "mask_id",
    "rope_base",
    "norm_eps",
    "n_kv_heads",
    "qkv_bias",
    "shift_logits",
)
_PICKLE_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt", ".pkl", ".pickle")


def step_dir_name(step: int) -> str:
    return f"{STEP_PREFIX}{step:08d}"


def optimizer_tensors(
    opt: torch.optim.Optimizer, names: dict[torch.nn.Parameter, str]
) -> dict[str, torch.Tensor]:
    """AdamW state keyed by parameter name (not index) so it survives reordering."""
    out = {}
    for p, st in opt.state.items():
        for key, val in st.items():
            if torch.is_tensor(val):
                out[f"{key}/{names[p]}"] = val.detach().cpu().contiguous()
    return out


def load_optimizer_tensors(
    opt: torch.optim.Optimizer,
    tensors: dict[str, torch.Tensor],
    params: dict[str, torch.nn.Parameter],
) -> None:
    on_device = any(g.get("fused") or g.get("capturable") for g in opt.param_groups)
    for key, val in tensors.items():
        kind, name = key.split("/", 1)
        p = params[name]
        if kind == "step":
            # fused / capturable AdamW keeps step as float32 on the parameter's device
            opt.state[p][kind] = val.to(p.device, torch.float32) if on_device else val
        else:
            opt.state[p][kind] = val.to(p.device)
    # Parameters with no saved state (never stepped) keep none, as in a fresh optimizer.


def save_checkpoint(
    run_dir: Path,
    step: int,
    *,
    model: torch.nn.Module,
    model_cfg: ModelConfig,
    tokenizer_path: Path,
    tokenizer_sha256: str,
    train_state: dict[str, Any] | None = None,
    optimizer: dict[str, torch.Tensor] | None = None,
    keep_last: int = 2,
    weights: dict[str, torch.Tensor] | None = None,
    manifest_extra: dict[str, Any] | None = None,
) -> Path:
    """Write ``run_dir/checkpoints/step-NNNNNNNN`` atomically; returns its path.

    ``weights``: the full state dict to write instead of ``model.state_dict()`` (FSDP2 gathers
    it from the shards). ``manifest_extra``: more MANIFEST.json fields (world size, parallelism).
    """
    t0 = time.perf_counter()
    ckpt_root = run_dir / "checkpoints"
    ckpt_root.mkdir(parents=True, exist_ok=True)
    final = ckpt_root / step_dir_name(step)
    source = model.state_dict() if weights is None else weights
    weights = {k: v.detach().cpu().contiguous() for k, v in source.items()}
    need = sum(t.numel() * t.element_size() for t in weights.values())
    need += sum(t.numel() * t.element_size() for t in (optimizer or {}).values())
    free = shutil.disk_usage(ckpt_root).free
    if need * 1.05 > free:
        raise CheckpointError(
            f"no space left for {final.name}: needs about {need * 1.05 / 1e6:.1f} MB, "
            f"{free / 1e6:.1f} MB free; nothing was written"
        )
    tmp = ckpt_root / f".tmp-{final.name}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        # A single metadata key keeps the file bytes reproducible (safetensors writes a multi-key
        # header in arbitrary order), so identical weights give identical files and sha256.
        meta = {
            "mdmctl": json.dumps(
                {
                    "format": "mdmctl-weights",
                    "format_version": FORMAT_VERSION,
                    "model_config": model_cfg.to_dict(),
                    "tokenizer_sha256": tokenizer_sha256,
                },
                sort_keys=True,
            )
        }
        save_file(weights, str(tmp / "model.safetensors"), metadata=meta)
        if optimizer is not None:
            save_file(
                optimizer, str(tmp / "optimizer.safetensors"), metadata={"mdmctl": "optimizer"}
            )
        if train_state is not None:
            # allow_nan=False: a non-finite value in loop state fails the save, not the next load.
            (tmp / "train_state.json").write_text(
                json.dumps(train_state, allow_nan=False, indent=1)
            )
        shutil.copyfile(tokenizer_path, tmp / "tokenizer.json")
        files = {}
        for f in sorted(tmp.iterdir()):
            os.chmod(f, 0o666 & ~umask())  # safetensors writes 0600; follow the user's umask
            fsync_file(f)
            files[f.name] = {"size": f.stat().st_size, "sha256": sha256_file(f)}
        manifest = {
            "format_version": FORMAT_VERSION,
            "step": step,
            "files": files,
            "objective": model_cfg.objective,
            "tokenizer_sha256": tokenizer_sha256,
            "mdmctl_version": __version__,
            "torch_version": torch.__version__,
            "created_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "save_seconds": round(time.perf_counter() - t0, 3),
            **(manifest_extra or {}),
        }
        (tmp / "MANIFEST.json").write_text(json.dumps(manifest, indent=1))
        fsync_file(tmp / "MANIFEST.json")
        fsync_dir(tmp)
        if final.exists():
            shutil.rmtree(final)  # re-saving the same step (e.g. a signal right after a save)
        os.replace(tmp, final)
        fsync_dir(ckpt_root)
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        # safetensors reports a full disk as SafetensorError, not OSError: classify by meaning.
        if is_no_space(e):
            last = find_latest(run_dir, quiet=True)
            raise CheckpointError(
                f"no space left on device while writing {final.name}; last good checkpoint "
                f"{last.name if last else '(none)'} is intact"
            ) from None
        if is_write_failure(e):
            raise CheckpointError(f"could not write {final.name}: {e}") from None
        raise
    _retain(ckpt_root, keep_last)
    return final


def _retain(ckpt_root: Path, keep_last: int) -> None:
    steps = sorted(p for p in ckpt_root.iterdir() if p.name.startswith(STEP_PREFIX))
    for old in steps[: max(0, len(steps) - keep_last)]:
        shutil.rmtree(old, ignore_errors=True)


def clean_stale_tmp(run_dir: Path) -> None:
    for p in (run_dir / "checkpoints").glob(".tmp-step-*"):
        shutil.rmtree(p, ignore_errors=True)


def verify(step_dir: Path, *, check_hash: bool = True) -> dict[str, Any]:
    """Check a step directory against its manifest; returns the manifest or raises CheckpointError."""
    if step_dir.is_file() or step_dir.suffix in _PICKLE_SUFFIXES:
        raise CheckpointError(
            f"{step_dir}: not an mdmctl checkpoint (no MANIFEST.json); mdmctl reads safetensors "
            "only and never unpickles"
        )
    if not step_dir.is_dir():
        raise CheckpointError(f"{step_dir}: checkpoint not found")
    mpath = step_dir / "MANIFEST.json"
    if not mpath.is_file():
        raise CheckpointError(f"{step_dir}: incomplete checkpoint (no MANIFEST.json)")
    try:
        manifest = json.loads(mpath.read_text())
        files = manifest["files"]
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise CheckpointError(f"{mpath}: unreadable manifest ({e})") from None
    if manifest.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(
            f"{step_dir}: checkpoint format_version {manifest.get('format_version')} made by mdmctl "
            f"{manifest.get('mdmctl_version')}; this is mdmctl {__version__}"
        )
    for name, entry in files.items():
        path = step_dir / name
        if not name.endswith((".safetensors", ".json")):
            raise CheckpointError(f"{path}: unexpected file type in checkpoint (never unpickled)")
        if not path.is_file():
            raise CheckpointError(f"{path}: missing (listed in MANIFEST.json)")
        size = path.stat().st_size
        if size != entry["size"]:
            raise CheckpointError(
                f"{path}: truncated or resized ({size} bytes, manifest says {entry['size']})"
            )
        if check_hash:
            actual = sha256_file(path)
            if actual != entry["sha256"]:
                raise CheckpointError(
                    f"{path}: sha256 mismatch (expected {entry['sha256'][:16]}…, "
                    f"actual {actual[:16]}…): the file is corrupt"
                )
    for name in files:
        _check_readable(step_dir / name)
    return manifest


def _check_readable(path: Path) -> None:
    """Parse a file's structure (cheap: headers and small JSON only).

    A manifest can match bytes that were already garbage when hashed (a bad write, a bug), so a
    matching hash is not enough: ``--resume auto`` must skip such a step exactly like a hash
    mismatch instead of picking it and failing at load.
    """
    if path.suffix == ".safetensors":
        try:
            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
                list(f.keys())
        except (SafetensorError, OSError, ValueError) as e:
            raise CheckpointError(f"{path}: unreadable weights ({e})") from None
        if path.name == "model.safetensors":
            _model_info(meta, path)
    elif path.suffix == ".json":
        try:
            json.loads(path.read_text(encoding="utf-8"), parse_constant=_reject_constant)
        except (ValueError, OSError) as e:
            raise CheckpointError(f"{path}: unreadable JSON ({e})") from None


def check_train_state(state: Any, path: Path) -> None:
    """The fields a resume reads (``find_latest(resumable=True)`` skips a step that lacks them,
    like a corrupt one, so ``--resume auto`` continues from the previous step)."""
    try:
        _ = state["config"], state["data"], state["loop"]["step"], state["loop"]["tokens_seen"]
    except (KeyError, TypeError) as e:
        raise CheckpointError(f"{path}: missing {e}") from None


def _reject_constant(name: str) -> None:
    raise ValueError(f"non-finite value {name}")


def _model_info(meta: dict[str, str], path: Path) -> tuple[ModelConfig, str]:
    """(model config, tokenizer sha256) from model.safetensors' ``mdmctl`` metadata."""
    try:
        info = json.loads(meta["mdmctl"])
        return ModelConfig.from_dict(info["model_config"]), info.get("tokenizer_sha256", "")
    except (KeyError, json.JSONDecodeError, TypeError, AttributeError, ConfigError) as e:
        raise CheckpointError(
            f"{path}: no mdmctl model config in safetensors metadata ({e})"
        ) from None


def list_steps(run_dir: Path) -> list[Path]:
    root = run_dir / "checkpoints"
    if not root.is_dir():
        return []
    return sorted((p for p in root.iterdir() if p.name.startswith(STEP_PREFIX)), reverse=True)


def find_latest(
    run_dir: Path, *, quiet: bool = False, log=None, resumable: bool = False
) -> Path | None:
    """Newest step that verifies (``resumable``: and holds a train state a resume can read);
    skipped ones are reported through ``log``. None if none exist."""
    reasons = []
    for step in list_steps(run_dir):
        try:
            verify(step)
            if resumable:
                check_train_state(read_train_state(step), step / "train_state.json")
            return step
        except CheckpointError as e:
            reasons.append(str(e))
            if log and not quiet:
                log(f"skipping {step.name}: {e}")
    if reasons and not quiet:
        raise CheckpointError(f"{run_dir}: no valid checkpoint: " + "; ".join(reasons))
    return None


def resolve_checkpoint(path: str | Path | None, runs_root: Path = Path("runs"), log=None) -> Path:
    """A step directory from a step dir, a run dir (its newest valid step) or None (newest run)."""
    if path is None:
        runs = (
            [r for r in runs_root.glob("*") if (r / "checkpoints").is_dir()]
            if runs_root.is_dir()
            else []
        )
        if not runs:
            raise CheckpointError(
                f"no runs under {runs_root}/; train one with 'mdmctl pretrain' or pass --checkpoint"
            )
        path = max(runs, key=lambda r: max((s.stat().st_mtime for s in list_steps(r)), default=0))
    p = Path(path)
    if (p / "MANIFEST.json").exists() or p.name.startswith(STEP_PREFIX) or not p.is_dir():
        verify(p)  # an explicitly named step never falls back to another
        return p
    latest = find_latest(p, log=log)
    if latest is None:
        raise CheckpointError(f"{p}: no checkpoints found")
    return latest


@dataclass
class LoadedCheckpoint:
    path: Path
    model_cfg: ModelConfig
    state_dict: dict[str, torch.Tensor]
    manifest: dict[str, Any]
    tokenizer_sha256: str


def load_checkpoint(step_dir: Path, *, check_hash: bool = True) -> LoadedCheckpoint:
    manifest = verify(step_dir, check_hash=check_hash)
    path = step_dir / "model.safetensors"
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            state = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{path}: unreadable weights ({e})") from None
    cfg, tokenizer_sha256 = _model_info(meta, path)
    return LoadedCheckpoint(step_dir, cfg, state, manifest, tokenizer_sha256)


def read_train_state(step_dir: Path) -> dict[str, Any]:
    path = step_dir / "train_state.json"
    if not path.is_file():
        raise CheckpointError(f"{path}: missing (a weights-only checkpoint cannot be resumed)")

    def bad_constant(name: str) -> None:
        raise CheckpointError(f"{path}: non-finite value {name} in train state")

    try:
        return json.loads(path.read_text(), parse_constant=bad_constant)
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path}:{e.lineno}: invalid JSON ({e.msg})") from None


def read_optimizer(step_dir: Path) -> dict[str, torch.Tensor]:
    path = step_dir / "optimizer.safetensors"
    try:
        with safe_open(str(path), framework="pt") as f:
            return {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{path}: unreadable optimizer state ({e})") from None


def check_compatible(ckpt: ModelConfig, requested: ModelConfig, fields=ARCH_FIELDS) -> None:
    """Every differing architecture field, as 'field: checkpoint=…, requested=…'."""
    diffs = [
        f"{f}: checkpoint={getattr(ckpt, f)}, requested={getattr(requested, f)}"
        for f in fields
        if getattr(ckpt, f) != getattr(requested, f)
    ]
    if diffs:
        raise CompatibilityError(
            "checkpoint does not match the requested model: " + "; ".join(diffs)
        )


def load_weights(model: torch.nn.Module, state: dict[str, torch.Tensor], path: Path) -> None:
    """Strict load with a short report of missing / unexpected / mis-shaped keys."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = [
        f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}"
        for k in own
        if k in state and state[k].shape != own[k].shape
    ]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"missing keys ({len(missing)}): {missing[:5]}")
        if unexpected:
            parts.append(f"unexpected keys ({len(unexpected)}): {unexpected[:5]}")
        if shapes:
            parts.append(f"shape mismatch ({len(shapes)}): {shapes[:5]}")
        raise CompatibilityError(f"{path}: " + "; ".join(parts))
    model.load_state_dict(state, strict=True)


def load_model(
    checkpoint: str | None,
    device: str = "auto",
    attention: str = "auto",
    log: Any = None,
    dtype: str = "fp32",
) -> tuple[Any, Any, Any, Path, torch.device]:
    """(model in eval mode, tokenizer, tokenizer info, step dir, device) from a checkpoint: the
    weights checked against the tokenizer they were trained with. ``dtype`` (fp32, bf16): the
    weights' type while it runs (logits are fp32 either way)."""
    from mdmctl.attention import resolve_backend
    from mdmctl.device import resolve_device
    from mdmctl.memory import check_weights_fit
    from mdmctl.model import Transformer
    from mdmctl.tokenizer import info_from_file

    step_dir = resolve_checkpoint(checkpoint, log=log)
    loaded = load_checkpoint(step_dir)
    tok, info = info_from_file(step_dir / "tokenizer.json", loaded.model_cfg.objective == "mdm")
    if info.sha256 != loaded.tokenizer_sha256:
        raise CompatibilityError(
            f"{step_dir}: tokenizer.json ({info.sha256[:12]}) is not the tokenizer the weights "
            f"were trained with ({loaded.tokenizer_sha256[:12]})"
        )
    if dtype not in WEIGHT_DTYPES:
        raise ConfigError(f"--dtype: expected one of {', '.join(WEIGHT_DTYPES)}, got {dtype!r}")
    dev = resolve_device(device)
    check_weights_fit(loaded.model_cfg, WEIGHT_DTYPES[dtype].itemsize, dev.type)
    model = Transformer(loaded.model_cfg, backend=resolve_backend(attention, dev))
    load_weights(model, loaded.state_dict, step_dir / "model.safetensors")
    del loaded  # the checkpoint's tensors: the model holds its own copy
    return model.to(dev, WEIGHT_DTYPES[dtype]).eval(), tok, info, step_dir, dev
