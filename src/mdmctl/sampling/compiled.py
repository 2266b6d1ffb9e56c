"""The model as the samplers run it: through ``torch.compile`` (``--compile``) and replayed from
CUDA graphs (``--cuda-graphs``, ``graphs.py``)."""

from __future__ import annotations

import torch

from mdmctl.errors import ConfigError

_COMPILE_ERRORS: dict[str, str | None] = {}


def compile_model(model, device) -> Compiled:
    """``model`` through ``torch.compile`` with dynamic shapes, since batches shrink as rows
    finish and MDM windows and ARM caches change length. The first calls pay the compilation (a
    minute or so on a CPU); compiled code is reused for the same model object. A device where
    torch.compile cannot run (no C++ compiler for CPU code, no Triton for CUDA) is a ConfigError,
    found with a one-op probe before any work is done."""
    kind = torch.device(device).type
    if kind not in _COMPILE_ERRORS:
        try:
            torch.compile(torch.add, dynamic=False)(torch.ones(2, device=device), 1)
            _COMPILE_ERRORS[kind] = None
        except Exception as e:  # a missing compiler shows as one of several exception types
            _COMPILE_ERRORS[kind] = (
                f"{type(e).__name__}: {(str(e).strip().splitlines() or [''])[0]}"
            )
    if _COMPILE_ERRORS[kind] is not None:
        raise ConfigError(f"--compile: torch.compile cannot run on {kind}: {_COMPILE_ERRORS[kind]}")
    return Compiled(model)


class Compiled:
    """A compiled model that otherwise behaves as the model (attributes pass through).

    Traced without duck shaping: by default equal sizes share one symbol, so a batch of 64 rows
    was tied to the head dimension (64) and every other batch size recompiled. A sampler then
    needs a few graphs per model (MDM: whole canvas, window, a window of one row; ARM: prefill
    and decode, with and without left padding, and of one row), and dynamo's default limit of 8
    per function counts every model's graphs together (the MDM and the ARM share
    ``Transformer.forward``): past it the model would silently run uncompiled, hence 64."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.model, self.fn = model, torch.compile(model, dynamic=True)

    def __call__(self, *args, **kwargs) -> torch.Tensor:
        import torch._dynamo.config as dynamo_config
        import torch.fx.experimental._config as fx_config

        with fx_config.patch(use_duck_shape=False), dynamo_config.patch(recompile_limit=64):
            return self.fn(*args, **kwargs)

    def __getattr__(self, name: str):
        return getattr(self.model, name)


def graphed_model(model, net, device):
    """``net`` (the model, or it compiled) replayed from CUDA graphs (sampling/graphs.py). The
    graphs are kept on the model, so later calls (bench repeats, lm-eval batches) replay the
    shapes earlier ones recorded."""
    from mdmctl.sampling.graphs import GraphedModel

    if torch.device(device).type != "cuda":
        raise ConfigError(
            f"--cuda-graphs needs a CUDA device; this run is on {torch.device(device).type}"
        )
    kept = model.__dict__.setdefault("_cuda_graphs", {})
    if isinstance(net, Compiled) not in kept:
        kept[isinstance(net, Compiled)] = GraphedModel(net)
    return kept[isinstance(net, Compiled)]
