"""Where a training step's time goes: the masking draws, forward with the loss, backward, gradient
clipping and the AdamW update, each timed on its own (medians), for each ``--loss-head`` and for
AdamW's implementations (``for-loop``, ``foreach``, ``fused``) on the device.

    python benchmarks/train_profile.py                        # small, vocabulary 8192, CPU fp32
    python benchmarks/train_profile.py --size 6M --seq-len 256 --vocab 32000
    python benchmarks/train_profile.py --chunks --vocab 32000   # the fused head's rows per chunk

``--chunks`` times the head and cross-entropy alone (forward and backward over batch x seq_len
rows of width d_model) for several rows per chunk, against ``F.cross_entropy`` on all the logits.
"""

from __future__ import annotations

import argparse
import time

import torch

from mdmctl.config import ModelConfig
from mdmctl.diffusion import forward_mask, masked_loss
from mdmctl.linear_ce import linear_cross_entropy
from mdmctl.model import Transformer


def timed(fn, device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def one_step(model, opt, x0, gen, head: str, device) -> dict[str, float]:
    """One MDM training step, phase by phase: seconds per phase."""
    cfg, box = model.cfg, {}

    def draws():
        t = torch.rand(x0.shape[0], generator=gen).to(device)
        box["p"] = (1 - 1e-3) * t + 1e-3
        box["xt"], box["masked"] = forward_mask(x0, box["p"], cfg.mask_id, gen)

    def forward():
        box["loss"] = masked_loss(model, box["xt"], x0, box["masked"], box["p"], x0.numel(), head)

    phases = {
        "draws": draws,
        "forward": forward,
        "backward": lambda: box["loss"].backward(),
        "clip": lambda: torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0),
        "adamw": lambda: (opt.step(), opt.zero_grad(set_to_none=True)),
    }
    return {name: timed(fn, device) for name, fn in phases.items()}


def profile(cfg, head: str, adamw: str, args, device) -> dict[str, float]:
    """Median seconds per phase over ``args.iters`` steps after ``args.warmup``."""
    torch.manual_seed(0)
    model = Transformer(cfg).to(device)
    kw = {"for-loop": dict(foreach=False), "foreach": dict(foreach=True), "fused": dict(fused=True)}
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, **kw[adamw])
    x0 = torch.randint(0, cfg.vocab_size - 1, (args.batch, cfg.seq_len)).to(device)
    steps = [
        one_step(model, opt, x0, torch.Generator().manual_seed(it), head, device)
        for it in range(args.warmup + args.iters)
    ][args.warmup :]
    return {k: sorted(s[k] for s in steps)[len(steps) // 2] for k in steps[0]}


def chunk_sweep(cfg, args, device) -> None:
    """The fused head and loss at several rows per chunk vs the whole-logits cross-entropy."""
    torch.manual_seed(0)
    n, d, v = args.batch * cfg.seq_len, cfg.d_model, cfg.vocab_size
    h = torch.randn(n, d, device=device, requires_grad=True)
    w = (0.02 * torch.randn(v, d, device=device)).requires_grad_()
    y = torch.randint(0, v, (n,), device=device)
    weights = torch.full((n,), 1.0 / n, device=device)

    def whole():
        (
            torch.nn.functional.cross_entropy(h @ w.t(), y, reduction="none") * weights
        ).sum().backward()

    def median(fn) -> float:
        ts = [timed(fn, device) for _ in range(args.warmup + args.iters)][args.warmup :]
        return sorted(ts)[len(ts) // 2]

    base = median(whole)
    print(f"# head + CE alone: {n} rows x {d} -> vocab {v}; whole logits {base * 1e3:.0f} ms")
    for rows in (8, 32, 64, 128, 256, 512, 1024):
        t = median(lambda r=rows: linear_cross_entropy(h, w, y, weights, rows=r).backward())
        print(f"rows {rows:>5}: {t * 1e3:>7.0f} ms  ({base / t:.2f}x the whole-logits time)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", default="small")
    ap.add_argument("--seq-len", type=int, default=None)
    ap.add_argument("--vocab", type=int, default=8192)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--heads", nargs="+", default=["full", "chunked"])
    ap.add_argument("--adamw", nargs="+", default=["for-loop", "foreach", "fused"])
    ap.add_argument("--iters", type=int, default=6)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--chunks", action="store_true", help="sweep the fused head's chunk rows")
    args = ap.parse_args()
    device = torch.device(args.device)
    over = {"vocab_size": args.vocab, "mask_id": args.vocab - 1}
    if args.seq_len:
        over["seq_len"] = args.seq_len
    cfg = ModelConfig.from_name(args.size, **over)
    if args.chunks:
        chunk_sweep(cfg, args, device)
        return
    print(f"# {args.size} MDM, vocab {args.vocab}, batch {args.batch} x {cfg.seq_len}, {device}")
    phases = ("draws", "forward", "backward", "clip", "adamw", "step")
    print(f"{'head':<8} {'AdamW':<9}" + "".join(f"{k:>10}" for k in phases) + "   (ms, medians)")
    for head in args.heads:
        for adamw in args.adamw:
            r = profile(cfg, head, adamw, args, device)
            total = sum(r.values())
            cells = "".join(f"{v * 1e3:>10.1f}" for v in r.values())
            print(f"{head:<8} {adamw:<9}{cells}{total * 1e3:>10.1f}", flush=True)


if __name__ == "__main__":
    main()
