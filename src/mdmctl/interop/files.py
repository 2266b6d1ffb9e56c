"""Safetensors weights in the Hugging Face layout: one ``model.safetensors`` or shards
``model-0000k-of-0000N.safetensors`` with ``model.safetensors.index.json`` (``metadata.total_size``,
``weight_map``), each file with HF's ``{"format": "pt"}`` header metadata. Never pickle."""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from mdmctl.errors import CheckpointError, ConfigError

WEIGHTS = "model.safetensors"
INDEX = "model.safetensors.index.json"
_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
          "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}  # fmt: skip


def parse_size(text: str) -> int:
    """'5GB' (HF's default shard size), '500MB', '2GiB', '1000000' -> bytes."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*", text)
    if not m or m.group(2).lower() not in _UNITS or float(m.group(1)) <= 0:
        raise ConfigError(f"--max-shard-size {text!r}: expected a size such as 5GB, 500MB or 2GiB")
    return int(float(m.group(1)) * _UNITS[m.group(2).lower()])


def nbytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


def plan_shards(tensors: dict[str, torch.Tensor], max_bytes: int) -> list[list[str]]:
    """Keys in order, cut into shards of at most ``max_bytes`` (a larger tensor sits alone)."""
    shards: list[list[str]] = [[]]
    size = 0
    for k, t in tensors.items():
        if shards[-1] and size + nbytes(t) > max_bytes:
            shards.append([])
            size = 0
        shards[-1].append(k)
        size += nbytes(t)
    return shards


def write_weights(tensors: dict[str, torch.Tensor], folder: Path, max_bytes: int) -> list[str]:
    """Write ``tensors`` into ``folder`` (one file, or shards plus index); returns file names."""
    shards = plan_shards(tensors, max_bytes)
    meta = {"format": "pt"}
    if len(shards) == 1:
        save_file(tensors, str(folder / WEIGHTS), metadata=meta)
        return [WEIGHTS]
    names = [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
    weight_map = {}
    for name, keys in zip(names, shards, strict=True):
        save_file({k: tensors[k] for k in keys}, str(folder / name), metadata=meta)
        weight_map.update(dict.fromkeys(keys, name))
    index = {
        "metadata": {"total_size": sum(map(nbytes, tensors.values()))},
        "weight_map": weight_map,
    }
    write_json(folder / INDEX, index)
    return [*names, INDEX]


def read_file(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """(tensors, header metadata) of one safetensors file, with a typed error when unreadable."""
    try:
        with safe_open(str(path), framework="pt") as f:
            return {k: f.get_tensor(k) for k in f.keys()}, dict(f.metadata() or {})
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{path}: unreadable safetensors file ({e})") from None


def read_weights(folder: Path) -> dict[str, torch.Tensor]:
    """The weights of an HF-layout folder: ``model.safetensors``, or the shards its index names."""
    if (folder / WEIGHTS).is_file():
        return read_file(folder / WEIGHTS)[0]
    if not (folder / INDEX).is_file():
        pickled = sorted(p.name for p in folder.glob("*.bin"))
        hint = (
            f" ({', '.join(pickled)} are pickle files, which mdmctl never loads)" if pickled else ""
        )
        raise CheckpointError(f"{folder}: no {WEIGHTS} or {INDEX}{hint}")
    index = read_json(folder / INDEX)
    weight_map = index.get("weight_map")
    if not isinstance(weight_map, dict):
        raise CheckpointError(f"{folder / INDEX}: no 'weight_map'")
    state: dict[str, torch.Tensor] = {}
    for name in sorted(set(weight_map.values())):
        state.update(read_file(folder / name)[0])
    missing = sorted(set(weight_map) - set(state))
    if missing:
        raise CheckpointError(f"{folder / INDEX}: tensors missing from the shards: {missing[:4]}")
    return state


def read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise CheckpointError(f"{path}: cannot read ({e.strerror or e})") from None
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path}:{e.lineno}: invalid JSON ({e.msg})") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: expected a JSON object")
    return data


def import_record(step_dir: Path) -> dict:
    """The ``import`` block of a checkpoint's run folder config.json: where an imported model
    came from, its layout and (LLaDA, Dream) its own config and tokenizer_config; {} for a run
    trained here."""
    path = step_dir.parent.parent / "config.json"
    return (read_json(path).get("import") or {}) if path.is_file() else {}


def write_json(path: Path, obj: dict) -> None:
    path.write_text(json.dumps(obj, indent=2) + "\n", encoding="utf-8")
