"""Fine-tuning vs pretraining throughput on the same model, and GSM8K evaluation throughput.

1. Tokens/s of ``pretrain`` (packed windows, no padding) and of ``finetune`` (length-sorted padded
   batches) on the same tiny MDM, same batch size, in the same process; the fine-tuning rate is
   reported both over all positions and over real (non-padding) tokens, with the padding share.
2. GSM8K generation throughput (problems/s) at batch 1 and batch 32 on the same checkpoint.

    python benchmarks/sft_and_generation.py [--gsm8k ../shared/data/gsm8k]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument(
        "--gsm8k", default=str(Path(__file__).resolve().parents[2] / "shared/data/gsm8k")
    )
    ap.add_argument("--problems", type=int, default=32)
    ap.add_argument("--steps", type=int, default=60)
    args = ap.parse_args()
    from mdmctl.config import FinetuneConfig, ModelConfig, RunConfig, TrainConfig
    from mdmctl.data.readers import CorpusSpec
    from mdmctl.data.shards import TokenizeConfig, tokenize_corpus
    from mdmctl.evaluation.gsm8k import evaluate_gsm8k
    from mdmctl.sampling import SampleConfig
    from mdmctl.train import finetune, pretrain

    g = Path(args.gsm8k)
    quiet = lambda m: None  # noqa: E731
    with tempfile.TemporaryDirectory() as tmp:
        t = Path(tmp)
        docs = t / "docs.jsonl"
        with open(g / "train.jsonl") as f, open(docs, "w") as out:
            for line in f:
                r = json.loads(line)
                out.write(json.dumps({"text": r["question"] + "\n" + r["answer"]}) + "\n")
        tokenize_corpus(
            TokenizeConfig(corpus=CorpusSpec(paths=(str(docs),)), out=str(t / "c"), vocab_size=2048)
        )
        model = ModelConfig.from_name("mini", seq_len=256)
        tc = TrainConfig(steps=args.steps, batch_size=16, val_every=10**6, save_every=10**6)
        pre = pretrain(
            RunConfig(model=model, train=tc, data=str(t / "c"), out=str(t / "pre"), device="cpu"),
            log=quiet,
        )
        pads: list[float] = []
        ft = finetune(
            FinetuneConfig(
                init=str(pre.checkpoint),
                data=str(g / "train.jsonl"),
                out=str(t / "ft"),
                train=tc,
                device="cpu",
            ),
            on_step=lambda s, n, r: pads.append(r["padding_frac"]),
            log=quiet,
        )
        pad = sum(pads) / len(pads)
        print(f"pretrain  {pre.tokens_per_s:9,.0f} tokens/s (packed, no padding)")
        print(
            f"finetune  {ft.tokens_per_s:9,.0f} tokens/s over all positions, "
            f"{ft.tokens_per_s * (1 - pad):,.0f} real tokens/s; padding {pad:.1%}; "
            f"ratio to pretrain {ft.tokens_per_s / pre.tokens_per_s:.2f} "
            f"({ft.tokens_per_s * (1 - pad) / pre.tokens_per_s:.2f} on real tokens)"
        )
        rates = {}
        for bs in (1, 32):
            scfg = SampleConfig.create(
                length=64, steps=64, temperature=0.0, cfg=0.1, batch_size=bs, device="cpu"
            )
            t0 = time.perf_counter()
            r = evaluate_gsm8k(
                data=str(g / "test.jsonl"),
                checkpoint=str(ft.checkpoint),
                limit=args.problems,
                sample_cfg=scfg,
                length=64,
            )
            rates[bs] = args.problems / (time.perf_counter() - t0)
            print(
                f"gsm8k eval batch {bs:>2}: {rates[bs]:.2f} problems/s "
                f"({args.problems} problems, length 64, 64 steps, CFG 0.1; accuracy {r.accuracy:.3f})"
            )
        print(f"batch 32 / batch 1: {rates[32] / rates[1]:.1f}x")


if __name__ == "__main__":
    main()
