"""Training throughput: mdmctl's Transformer vs Hugging Face ``LlamaForCausalLM`` at the same size.

Both models are built in the same process with identical shapes (layers, width, heads, SwiGLU
width, vocabulary, untied embeddings, no biases, RoPE base 10000) and trained with the same AdamW
step on the same random token batches. Both run causal attention through PyTorch SDPA, so the
comparison is of the model implementations, not of attention kernels. Timings alternate between
the two models to share any machine noise; the ratio mdmctl / HF is printed per size.

    python benchmarks/train_throughput.py                       # CPU fp32: tiny and small
    python benchmarks/train_throughput.py --device cuda --sizes 170M 1028M --dtype bf16 \
        --batch 8 --seq-len 2048 --attention xformers sdpa      # GPU: adds MFU

Needs ``transformers`` (``pip install -e '.[bench]'``).
"""

from __future__ import annotations

import argparse
import json
import time

import torch


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


def step_fn(model, is_hf, opt, x, device, dtype):
    from mdmctl.autoregressive import arm_loss
    from mdmctl.device import autocast

    with autocast(device, dtype):
        if is_hf:
            loss = model(input_ids=x, labels=x).loss
        else:
            loss = arm_loss(model(x), x)
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)


def bench(size, args, device, dtype, backend):
    from mdmctl.config import ModelConfig
    from mdmctl.device import peak_flops
    from mdmctl.model import Transformer

    overrides = {"objective": "arm", "vocab_size": args.vocab}
    if args.seq_len:
        overrides["seq_len"] = args.seq_len
    cfg = ModelConfig.from_name(size, **overrides)
    torch.manual_seed(0)
    ours = Transformer(cfg, backend=backend).to(device)
    theirs = hf_llama(cfg).to(device)
    n_ours = sum(p.numel() for p in ours.parameters())
    n_theirs = sum(p.numel() for p in theirs.parameters())
    assert n_ours == n_theirs, (n_ours, n_theirs)
    opts = {
        m: torch.optim.AdamW(m.parameters(), lr=1e-4, fused=device.type == "cuda")
        for m in (ours, theirs)
    }
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, args.vocab, (args.batch, cfg.seq_len), generator=g).to(device)
    times = {"mdmctl": [], "hf": []}
    for it in range(args.warmup + args.iters):
        for name, model in (("mdmctl", ours), ("hf", theirs)):
            if device.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            step_fn(model, name == "hf", opts[model], x, device, dtype)
            if device.type == "cuda":
                torch.cuda.synchronize()
            if it >= args.warmup:
                times[name].append(time.perf_counter() - t0)
    tokens = args.batch * cfg.seq_len
    res = {
        "size": size,
        "attention": backend,
        "params": n_ours,
        "seq_len": cfg.seq_len,
        "batch": args.batch,
    }
    for name, ts in times.items():
        ts = sorted(ts)
        res[f"{name}_tok_s"] = tokens / ts[len(ts) // 2]  # median step
    res["ratio"] = res["mdmctl_tok_s"] / res["hf_tok_s"]
    peak = peak_flops(device)
    if peak:
        f = cfg.flops_per_token()
        res["mdmctl_mfu"] = f * res["mdmctl_tok_s"] / peak
        res["hf_mfu"] = f * res["hf_tok_s"] / peak
    del ours, theirs, opts
    if device.type == "cuda":
        res["peak_mem_gb"] = torch.cuda.max_memory_allocated() / 1e9
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", nargs="+", default=["tiny", "small"])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"])
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq-len", type=int, default=None)
    ap.add_argument("--vocab", type=int, default=4096)
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--attention", nargs="+", default=["sdpa"])
    ap.add_argument("--json", help="write results to this file")
    args = ap.parse_args()
    device = torch.device(args.device)
    dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float32
    from mdmctl.attention import resolve_backend
    from mdmctl.errors import ConfigError

    rows = []
    for size in args.sizes:
        for att in args.attention:
            try:
                backend = resolve_backend(att, device)
            except ConfigError as e:
                print(f"{size:>6} {att:>8}  skipped: {e}", flush=True)
                continue
            rows.append(bench(size, args, device, dtype, backend))
            r = rows[-1]
            line = (
                f"{r['size']:>6} {r['attention']:>8}  seq {r['seq_len']:>5} batch {r['batch']:>3}  "
                f"mdmctl {r['mdmctl_tok_s']:>10,.0f} tok/s   HF Llama {r['hf_tok_s']:>10,.0f} tok/s"
                f"   ratio {r['ratio']:.2f}"
            )
            if "mdmctl_mfu" in r:
                line += f"   MFU {r['mdmctl_mfu']:.1%} vs {r['hf_mfu']:.1%}"
            print(line, flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(
                {"device": str(device), "torch": torch.__version__, "rows": rows}, f, indent=1
            )


if __name__ == "__main__":
    main()
