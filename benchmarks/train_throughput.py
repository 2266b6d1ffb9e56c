"""Training throughput and step memory: mdmctl's MDM and ARM steps vs Hugging Face
``LlamaForCausalLM`` at the same shape.

Both models are built in the same process with identical shapes (layers, width, heads, SwiGLU
width, vocabulary, untied embeddings, no biases, RoPE base 10000) and trained with the same AdamW
step on the same random token batches. HF's step is its causal-LM loss over every position (the
full (B, L, V) logits), which is what the reference stacks pay for either objective (SMDM's MDM
step computes the logits everywhere too). mdmctl's steps run each ``--loss-head``: ``full`` (the
reference path), ``scored`` (the head only where the loss scores: the MDM's masked positions) and
``chunked`` (that, with the head and the cross-entropy fused over row chunks). All use PyTorch SDPA
unless ``--attention`` says otherwise. Timings alternate between the variants to share any machine
noise; each row prints tokens/s and the ratio to HF's.

``--memory`` adds each variant's peak step memory above the weights, gradients and AdamW moments
(what activations and logits add), measured in a fresh process per variant: peak RSS on CPU (the
kernel's high-water mark, reset just before the step, with glibc's mmap threshold pinned so freed
buffers leave the process), ``max_memory_allocated`` on CUDA.

    python benchmarks/train_throughput.py                     # CPU fp32: small, vocab 8192, 32000
    python benchmarks/train_throughput.py --memory --iters 6
    python benchmarks/train_throughput.py --device cuda --sizes 170M 1028M --dtype bf16 \\
        --batch 8 --seq-len 2048 --attention xformers sdpa     # GPU: adds MFU

Needs ``transformers`` (``pip install -e '.[bench]'``).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

HEADS = ("full", "scored", "chunked")


def hf_llama(cfg):
    from transformers import LlamaConfig, LlamaForCausalLM

    hc = LlamaConfig(
        vocab_size=cfg.vocab_size,
        hidden_size=cfg.d_model,
        intermediate_size=cfg.d_ff,
        num_hidden_layers=cfg.n_layers,
        num_attention_heads=cfg.n_heads,
        num_key_value_heads=cfg.n_heads,
        max_position_embeddings=cfg.seq_len,
        rms_norm_eps=cfg.norm_eps,
        rope_theta=cfg.rope_base,
        tie_word_embeddings=False,
        attention_bias=False,
        mlp_bias=False,
    )
    hc._attn_implementation = "sdpa"
    return LlamaForCausalLM(hc)


def model_config(size: str, objective: str, vocab: int, seq_len: int | None):
    from mdmctl.config import ModelConfig

    over = {"objective": objective, "vocab_size": vocab, "mask_id": vocab - 1}
    if seq_len:
        over["seq_len"] = seq_len
    return ModelConfig.from_name(size, **over)


def build(variant: str, cfg, device, backend, compile_blocks: bool = False):
    """(model, loss function of a batch) for 'hf' or an mdmctl loss head."""
    from mdmctl.autoregressive import arm_train_loss
    from mdmctl.diffusion import mdm_loss
    from mdmctl.model import Transformer

    torch.manual_seed(0)
    if variant == "hf":
        model = hf_llama(cfg).to(device)
        return model, lambda x, gen: model(input_ids=x, labels=x).loss
    model = Transformer(cfg, backend=backend).to(device)
    if compile_blocks:
        for block in model.blocks:
            block.compile()
    head = variant.removesuffix("+compile")
    if cfg.objective == "mdm":
        return model, lambda x, gen: mdm_loss(model, x, cfg.mask_id, gen, head=head)
    return model, lambda x, gen: arm_train_loss(model, x, head=head)


def train_step(model, loss_fn, opt, x, gen, device, dtype) -> None:
    from mdmctl.device import autocast

    with autocast(device, dtype):
        loss = loss_fn(x, gen)
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)


def sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def throughput(size, objective, vocab, args, device, dtype, backend) -> dict:
    """Tokens/s of each variant, alternating steps; medians after warm-up."""
    from mdmctl.device import peak_flops

    cfg = model_config(size, objective, vocab, args.seq_len)
    variants = ["hf", *args.heads] + [f"{h}+compile" for h in args.compile_heads]
    built = {v: build(v, cfg, device, backend, v.endswith("+compile")) for v in variants}
    n_params = {v: sum(p.numel() for p in m.parameters()) for v, (m, _) in built.items()}
    assert len(set(n_params.values())) == 1, n_params
    opts = {
        v: torch.optim.AdamW(m.parameters(), lr=1e-4, fused=device.type == "cuda")
        for v, (m, _) in built.items()
    }
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, vocab - 1, (args.batch, cfg.seq_len), generator=g).to(device)
    times: dict[str, list[float]] = {v: [] for v in variants}
    first: dict[str, float] = {}
    for it in range(args.warmup + args.iters):
        for v in variants:
            model, loss_fn = built[v]
            gen = torch.Generator().manual_seed(it)  # the same masking draws for every variant
            sync(device)
            t0 = time.perf_counter()
            train_step(model, loss_fn, opts[v], x, gen, device, dtype)
            sync(device)
            dt = time.perf_counter() - t0
            if it == 0:
                first[v] = dt
            if it >= args.warmup:
                times[v].append(dt)
    tokens = args.batch * cfg.seq_len
    row = {"size": size, "objective": objective, "vocab": vocab, "attention": backend,
           "params": n_params["hf"], "seq_len": cfg.seq_len, "batch": args.batch,
           "first_step_s": first}  # fmt: skip
    peak = peak_flops(device)
    for v, ts in times.items():
        tok_s = tokens / sorted(ts)[len(ts) // 2]  # median step
        row[f"{v}_tok_s"] = tok_s
        if peak:
            row[f"{v}_mfu"] = cfg.flops_per_token() * tok_s / peak
    return row


def step_memory_child(spec: dict) -> dict:
    """In a fresh process: the peak of one training step above weights, gradients and moments."""
    device = torch.device(spec["device"])
    dtype = torch.bfloat16 if spec["dtype"] == "bf16" else torch.float32
    cfg = model_config(spec["size"], spec["objective"], spec["vocab"], spec["seq_len"])
    model, loss_fn = build(spec["variant"], cfg, device, spec["backend"])
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device.type == "cuda")
    for p in model.parameters():  # gradients and moments allocated before measuring
        p.grad = torch.zeros_like(p)
    opt.step()
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, spec["vocab"] - 1, (spec["batch"], cfg.seq_len), generator=g).to(device)
    peaks = []
    for it in range(3):  # the first step warms kernels; the peak is the max of the next two
        gen = torch.Generator().manual_seed(it)
        base = _rss(device)
        _reset_peak(device)
        from mdmctl.device import autocast

        with autocast(device, dtype):
            loss = loss_fn(x, gen)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=False)
        sync(device)
        if it:
            peaks.append(_peak(device) - base)
    return {"peak_step_bytes": max(peaks), "tokens": spec["batch"] * cfg.seq_len}


def _rss(device) -> int:
    if device.type == "cuda":
        return torch.cuda.memory_allocated()
    return _status_kib("VmRSS") * 1024


def _reset_peak(device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    else:
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS


def _peak(device) -> int:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated()
    return _status_kib("VmHWM") * 1024


def _status_kib(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {key} in /proc/self/status")


def step_memory(spec: dict) -> dict:
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536")  # freed buffers go back to the OS
    out = subprocess.run(
        [sys.executable, __file__, "--child", json.dumps(spec)],
        capture_output=True, text=True, env=env,
    )  # fmt: skip
    if out.returncode != 0:
        raise RuntimeError(out.stderr.strip().splitlines()[-1])
    return json.loads(out.stdout)


def render(row: dict, variants: list[str]) -> str:
    hf = row["hf_tok_s"]
    parts = [f"{row['size']:>6} {row['objective']} V={row['vocab']:<6} {row['attention']:>8}  "
             f"seq {row['seq_len']} batch {row['batch']}  HF {hf:,.0f} tok/s"]  # fmt: skip
    for v in variants:
        s = f" | {v} {row[v + '_tok_s']:,.0f} ({row[v + '_tok_s'] / hf:.2f}x)"
        if f"{v}_mem_mib" in row:
            s += f" mem {row[v + '_mem_mib']:.0f} MiB"
        parts.append(s)
    if "hf_mem_mib" in row:
        parts.append(f" | HF mem {row['hf_mem_mib']:.0f} MiB")
    if "hf_mfu" in row:
        parts.append(" | MFU " + ", ".join(f"{v} {row[v + '_mfu']:.1%}" for v in ["hf", *variants]))
    return "".join(parts)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", nargs="+", default=["small"])
    ap.add_argument("--objectives", nargs="+", default=["mdm", "arm"])
    ap.add_argument("--vocab", nargs="+", type=int, default=[8192, 32000])
    ap.add_argument("--heads", nargs="+", default=list(HEADS), choices=HEADS)
    ap.add_argument("--compile-heads", nargs="*", default=[], choices=HEADS,
                    help="also time these heads with torch.compile'd blocks")  # fmt: skip
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"])
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq-len", type=int, default=None)
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--attention", nargs="+", default=["sdpa"])
    ap.add_argument("--memory", action="store_true", help="add each variant's peak step memory")
    ap.add_argument("--json", help="write results to this file")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(step_memory_child(json.loads(args.child))))
        return
    device = torch.device(args.device)
    dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float32
    from mdmctl.attention import resolve_backend
    from mdmctl.errors import ConfigError

    variants = [*args.heads] + [f"{h}+compile" for h in args.compile_heads]
    rows = []
    for size in args.sizes:
        for att in args.attention:
            try:
                backend = resolve_backend(att, device)
            except ConfigError as e:
                print(f"{size:>6} {att:>8}  skipped: {e}", flush=True)
                continue
            for vocab in args.vocab:
                for objective in args.objectives:
                    row = throughput(size, objective, vocab, args, device, dtype, backend)
                    if args.memory:
                        for v in ["hf", *args.heads]:
                            spec = {"variant": v, "size": size, "objective": objective,
                                    "vocab": vocab, "seq_len": args.seq_len, "batch": args.batch,
                                    "device": args.device, "dtype": args.dtype,
                                    "backend": backend}  # fmt: skip
                            row[f"{v}_mem_mib"] = step_memory(spec)["peak_step_bytes"] / 2**20
                    rows.append(row)
                    print(render(row, variants), flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(
                {"device": str(device), "torch": torch.__version__, "rows": rows}, f, indent=1
            )


if __name__ == "__main__":
    main()
