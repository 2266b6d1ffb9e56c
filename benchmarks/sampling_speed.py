"""Sampling speed by execution mode: eager, ``torch.compile`` and CUDA graphs, in one run.

Randomly initialised MDM and ARM of one size (speed does not depend on the weights, so no
trained pair is needed): the naive MDM sampler (one token per step, the whole canvas), the
window-4 dual cache over blocks of 8 (one token per step, so both MDM settings make the same
number of forwards whatever the weights), and the ARM with its KV cache, each at batch 1 and at a
large batch. Every mode runs once before it is timed (compilation and graph recording are not
timed). Prints generated tokens/s and the ratio to the same setting's eager run; CUDA graphs
only on a CUDA device (``gpu_check.sh`` runs this there).

    python benchmarks/sampling_speed.py [--size 6M] [--device auto] [--batch 64] [--compile]
"""

from __future__ import annotations

import argparse
import time

import torch

from mdmctl.config import ModelConfig
from mdmctl.model import Transformer
from mdmctl.sampling import compile_model
from mdmctl.sampling.arm import sample_arm
from mdmctl.sampling.cache import CachedMDM
from mdmctl.sampling.graphs import GraphedModel
from mdmctl.sampling.mdm import Decoding, sample_mdm


def settings(mdm, arm, prompt_len: int, gen: int, vocab: int):
    """name -> run(net, batch, graphs): one sampling call, its generated token count."""
    mask = mdm.cfg.mask_id

    def mdm_run(cache: str):
        def run(net, B: int, graphs: bool) -> int:
            prompts = [[(7 * b + i) % vocab for i in range(prompt_len)] for b in range(B)]
            fn = (lambda x, d: net(x, doc_ids=d)) if cache == "none" else CachedMDM(
                net, cache, 4, mask)  # fmt: skip
            dec = Decoding(block_length=8 if cache != "none" else None, keep_batch=graphs)
            sample_mdm(fn, prompts, length=gen, steps=gen, mask_id=mask, pad_id=0,
                       generator=torch.Generator(), decoding=dec, device=_device(net))  # fmt: skip
            return B * gen

        return run

    def arm_run(net, B: int, graphs: bool) -> int:
        prompts = [[(7 * b + i) % vocab for i in range(prompt_len)] for b in range(B)]
        sample_arm(net, prompts, length=gen, eos_id=0, generator=torch.Generator(),
                   stop_at_eos=False, device=_device(net), keep_batch=graphs)  # fmt: skip
        return B * gen

    return {
        "MDM naive (1 token/step, whole canvas)": (mdm, mdm_run("none")),
        "MDM blocks 8, dual cache, window 4": (mdm, mdm_run("dual")),
        "ARM, KV cache": (arm, arm_run),
    }


def _device(net) -> torch.device:
    return next(net.parameters()).device


def timed(run, net, B: int, graphs: bool, repeats: int) -> float:
    """Generated tokens/s, the fastest of ``repeats`` after one untimed run."""
    run(net, B, graphs)
    best = float("inf")
    for _ in range(repeats):
        if _device(net).type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        n = run(net, B, graphs)
        if _device(net).type == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t0)
    return n / best


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", default="6M")
    p.add_argument("--device", default="auto")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--prompt-len", type=int, default=20)
    p.add_argument("--gen", type=int, default=32)
    p.add_argument("--vocab", type=int, default=2048)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--compile", action="store_true", help="also torch.compile (slow to warm up)")
    a = p.parse_args()
    dev = torch.device("cuda" if a.device == "auto" and torch.cuda.is_available() else
                       "cpu" if a.device == "auto" else a.device)  # fmt: skip
    seq = a.prompt_len + a.gen + 1
    torch.manual_seed(0)
    mdm = Transformer(ModelConfig.from_name(a.size, vocab_size=a.vocab + 1, mask_id=a.vocab,
                                            seq_len=seq)).to(dev).eval()  # fmt: skip
    arm = Transformer(ModelConfig.from_name(a.size, objective="arm", vocab_size=a.vocab,
                                            seq_len=seq)).to(dev).eval()  # fmt: skip
    modes = ["eager"] + (["compiled"] if a.compile else [])
    modes += ["CUDA graphs"] + (["compiled + CUDA graphs"] if a.compile else [])
    card = torch.cuda.get_device_name() if dev.type == "cuda" else "CPU"
    print(f"{a.size} MDM and ARM on {dev} ({card}), prompt {a.prompt_len}, {a.gen} generated "
          f"tokens, torch {torch.__version__}")  # fmt: skip
    print(f"{'setting':40} {'batch':>5} {'mode':>24} {'tokens/s':>10} {'x eager':>8}")
    for name, (model, run) in settings(mdm, arm, a.prompt_len, a.gen, a.vocab).items():
        for B in (1, a.batch):
            base = None
            for mode in modes:
                graphs = "graphs" in mode
                if graphs and dev.type != "cuda":
                    continue
                net = compile_model(model, dev) if "compiled" in mode else model
                net = GraphedModel(net) if graphs else net
                tps = timed(run, net, B, graphs, a.repeats)
                base = base or tps
                print(f"{name:40} {B:5d} {mode:>24} {tps:10.0f} {tps / base:8.2f}")


if __name__ == "__main__":
    main()
