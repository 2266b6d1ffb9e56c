"""Held-out perplexity (docs/method.md §4).

ARM: exact. Each window of ``seq_len`` tokens scores tokens 2..L given their prefix in the window.
MDM: an upper bound, exp of the per-token Monte Carlo ELBO with ``mc_samples`` stratified t per
window, reported with the Monte Carlo standard error of the per-token bound. Always labelled.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from mdmctl.autoregressive import arm_nll
from mdmctl.data.batches import TokenWindows, mix
from mdmctl.diffusion import mdm_elbo
from mdmctl.errors import CompatibilityError, ConfigError, DataError
from mdmctl.progress import report


@dataclass(frozen=True, kw_only=True, slots=True)
class PplConfig:
    checkpoint: str | None = None
    data: str | None = None
    """Tokenized corpus dir (its val split) or .txt/.jsonl files; None: the training corpus."""
    split: str = "val"
    mc_samples: int = 32
    batch_size: int = 8
    max_windows: int | None = None
    seed: int = 0
    device: str = "auto"
    attention: str = "auto"
    text_field: str = "text"

    def __post_init__(self) -> None:
        for name in ("mc_samples", "batch_size"):
            if getattr(self, name) < 1:
                raise ConfigError(
                    f"--{name.replace('_', '-')}: must be >= 1, got {getattr(self, name)}"
                )
        if self.split not in ("train", "val"):
            raise ConfigError(f"--split: expected train or val, got {self.split!r}")


@dataclass
class PplResult:
    objective: str
    kind: str  # "exact" or "upper bound"
    nll_per_token: float
    stderr: float
    perplexity: float
    tokens: int
    windows: int
    mc_samples: int | None
    seconds: float
    checkpoint: Path
    data: str


def _windows_from_files(
    paths: list[str], tok, eos_id: int, seq_len: int, text_field: str
) -> list[torch.Tensor]:
    from mdmctl.data.readers import CorpusSpec, iter_documents

    ids: list[int] = []
    from mdmctl.tokenizer import encode_literal

    for text, _ in iter_documents(CorpusSpec(paths=tuple(paths), text_field=text_field)):
        ids.extend(encode_literal(tok, text) + [eos_id])
    if not ids:
        raise DataError(f"{', '.join(paths)}: no text to score")
    return [torch.tensor(ids[s : s + seq_len]) for s in range(0, len(ids), seq_len)]


def evaluate_ppl(cfg: PplConfig, log=None) -> PplResult:
    from mdmctl.checkpoint import load_model
    from mdmctl.data.shards import read_manifest, verify_corpus
    from mdmctl.memory import check_eval_batch

    t0 = time.perf_counter()
    model, tok, info, step_dir, device = load_model(cfg.checkpoint, cfg.device, cfg.attention, log)
    mc = model.cfg
    check_eval_batch(mc, cfg.batch_size, device.type)
    data = cfg.data
    if data is None:
        from mdmctl.checkpoint import read_train_state

        corpus = read_train_state(step_dir).get("corpus", {})
        if corpus.get("sft") or "path" not in corpus:
            raise ConfigError(f"{step_dir}: no pretraining corpus recorded; pass --data")
        data = corpus["path"]
    p = Path(data)
    if p.is_dir() and (p / "corpus.json").is_file():
        manifest = read_manifest(p)
        # The split scored is hashed as pretraining hashes its corpus: a flipped byte scores
        # silently otherwise.
        verify_corpus(manifest, splits=(cfg.split,), log=log or (lambda m: None))
        if manifest.meta["tokenizer"]["sha256"] != info.sha256:
            raise CompatibilityError(
                f"tokenizer mismatch: corpus {p} has {manifest.meta['tokenizer']['sha256'][:12]}, "
                f"checkpoint {step_dir} has {info.sha256[:12]}"
            )
        tw = TokenWindows(manifest, cfg.split, mc.seq_len)
        n = len(tw) if cfg.max_windows is None else min(len(tw), cfg.max_windows)
        windows = [tw.window(i)[0] for i in range(n)]
        if not windows:
            raise DataError(
                f"{p}: {cfg.split} split is shorter than one window of {mc.seq_len} tokens"
            )
    else:
        windows = _windows_from_files([data], tok, info.eos_id, mc.seq_len, cfg.text_field)
        if cfg.max_windows is not None:
            windows = windows[: cfg.max_windows]
    gen = torch.Generator().manual_seed(mix(cfg.seed, 0xE7A1))
    total, var, tokens = 0.0, 0.0, 0
    # Windows of equal length batch together (only the last from text files can be shorter).
    by_len: dict[int, list[torch.Tensor]] = {}
    for w in windows:
        by_len.setdefault(len(w), []).append(w)
    done = 0
    with torch.no_grad():
        for L, ws in sorted(by_len.items()):
            for s in range(0, len(ws), cfg.batch_size):
                x0 = torch.stack(ws[s : s + cfg.batch_size]).to(device)
                if mc.objective == "mdm":
                    bound, se = mdm_elbo(lambda xt: model(xt), x0, mc.mask_id, cfg.mc_samples, gen)
                    total += float(bound.sum())
                    var += float((se.double() ** 2).sum())
                    tokens += x0.numel()
                elif L > 1:
                    total += float(arm_nll(model(x0), x0).sum())
                    tokens += x0.shape[0] * (L - 1)
                done += len(x0)
                report("perplexity windows", done, len(windows))
    if tokens == 0:
        raise DataError(f"{data}: nothing to score")
    nll = total / tokens
    return PplResult(
        objective=mc.objective,
        kind="upper bound" if mc.objective == "mdm" else "exact",
        nll_per_token=nll,
        stderr=math.sqrt(var) / tokens,
        perplexity=math.exp(nll),
        tokens=tokens,
        windows=len(windows),
        mc_samples=cfg.mc_samples if mc.objective == "mdm" else None,
        seconds=time.perf_counter() - t0,
        checkpoint=step_dir,
        data=str(data),
    )
