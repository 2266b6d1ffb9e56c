"""Sampling from MDM and ARM checkpoints (docs/method.md §5). This file only re-exports.

- ``decoding``: ``Decoding``, how the canvas is revealed (torch-free)
- ``config``: ``SampleConfig`` (holds a ``Decoding``), ``for_objective`` (torch-free)
- ``generation``: ``generate`` and ``sample_from_checkpoint``, one code path for both objectives
- ``mdm`` and ``select``: the MDM samplers and their token selection; ``arm``: the ARM's
  KV-cache sampler; ``cache``: the MDM KV caches; ``compiled`` and ``graphs``: ``--compile`` and
  ``--cuda-graphs``

The names below load on first use, so the torch-free modules (and ``mdmctl --help``, which builds
its options from ``Decoding``) import without torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "Decoding": "decoding",
    "SampleConfig": "config",
    "for_objective": "config",
    "fit_length": "config",
    "DEFAULT_MAX_LENGTH": "config",
    "generate": "generation",
    "Generation": "generation",
    "row_seed": "generation",
    "sample_from_checkpoint": "generation",
    "Sample": "generation",
    "SampleResult": "generation",
    "compile_model": "compiled",
    "graphed_model": "compiled",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'mdmctl.sampling' has no attribute {name!r}")
    return getattr(importlib.import_module(f"mdmctl.sampling.{_EXPORTS[name]}"), name)
