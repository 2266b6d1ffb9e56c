"""The cost of a random stream per sequence: sampled MDM decoding with one ``torch.Generator``
for the batch against ``RowStreams`` (what ``mdmctl sample`` and the evaluations use), on the
same model, prompts and settings, in interleaved rounds (the fastest time of each is kept).

    python benchmarks/row_streams.py work/arith/mdm work/arith/data/test.jsonl [--batch 64]

Prints seconds per batch and the ratio (one stream / per row: above 1 means per row is faster).
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from mdmctl.checkpoint import load_model
from mdmctl.device import hardware
from mdmctl.sampling.mdm import Decoding, sample_mdm
from mdmctl.sampling.select import RowStreams

SETTINGS = {
    "confidence, temperature 1": Decoding(temperature=1.0),
    "ancestral, temperature 1": Decoding(sampler="ancestral", temperature=1.0),
    "blocks 16, threshold 0.9, temperature 1": Decoding(
        temperature=1.0, block_length=16, threshold=0.9
    ),
}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("checkpoint")
    ap.add_argument("prompts", help="jsonl with a 'prompt' field")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--canvas", type=int, default=52, help="prompt + generation tokens")
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    model, tok, info, _, dev = load_model(args.checkpoint, "cpu")
    rows = [json.loads(line) for line in open(args.prompts)][: args.batch]
    prompts = [tok.encode(r["prompt"], add_special_tokens=False).ids for r in rows]
    lengths = [args.canvas - len(p) for p in prompts]
    print(f"{hardware(dev)}; batch {len(prompts)}, canvas {args.canvas}, "
          f"vocab {model.cfg.vocab_size}")  # fmt: skip
    for name, dec in SETTINGS.items():
        best = {"one stream": float("inf"), "per row": float("inf")}
        for _ in range(args.rounds):
            for kind in best:
                g = (torch.Generator().manual_seed(0) if kind == "one stream"
                     else RowStreams.seeded(list(range(len(prompts))), dev))  # fmt: skip
                t0 = time.perf_counter()
                sample_mdm(lambda x, d: model(x, doc_ids=d), prompts, length=lengths,
                           steps=lengths, mask_id=model.cfg.mask_id, pad_id=info.pad_id,
                           generator=g, decoding=dec)  # fmt: skip
                best[kind] = min(best[kind], time.perf_counter() - t0)
        ratio = best["one stream"] / best["per row"]
        print(f"{name}: one stream {best['one stream']:.2f} s, per row {best['per row']:.2f} s, "
              f"ratio {ratio:.2f}")  # fmt: skip


if __name__ == "__main__":
    main()
