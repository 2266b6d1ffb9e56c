"""Likelihood scoring throughput: the batched engine against the naive per-request loop.

The naive loop is what SMDM's and LLaDA's lm-eval adapters do: for each request, its Monte Carlo
samples (or, for the chain rule, its positions) in batches of ``--naive-batch`` rows (LLaDA's
default 32), full-vocabulary logits at every position, no sharing between requests. Both use the
same random draws, so the results must agree; the benchmark checks that and prints requests/s and
the ratio.

Requests are multiple-choice shaped (4 choices sharing a context). With ``--data`` (a zero-shot
task file such as ../shared/data/benchmarks/arc_easy.jsonl) they are the task's real texts
tokenized with a BPE (``--tokenizer``, or one trained on the task's own text); otherwise
synthetic token ids with ARC-like lengths. The model is a randomly initialised MDM (speed does
not depend on the weights).

    python benchmarks/likelihood.py [--size tiny] [--requests 128] [--mc-samples 128] [--cfg 0]
"""

from __future__ import annotations

import argparse
import random
import time
from pathlib import Path

import torch


def naive(
    model, reqs, estimator: str, n: int, w: float, seed: int, mask_id: int, batch: int
) -> list[float]:
    """One request at a time, its rows in batches of ``batch``, full logits."""
    from mdmctl.diffusion import stratified_t
    from mdmctl.evaluation import likelihood as lk
    from mdmctl.sampling.mdm import cfg_logits

    fn = lambda x, d: model(x, doc_ids=d)  # noqa: E731
    dev = next(model.parameters()).device
    out = []
    for ctx, cont in reqs:
        c, x, _ = lk._fit(ctx, cont, model.cfg.seq_len)
        C = len(x)
        x0 = torch.tensor(c + x)
        if estimator == "mc":
            g = torch.Generator().manual_seed(lk._context_key(seed, c))
            t = stratified_t(n, g, 1e-3)
            masked = torch.rand(n, model.cfg.seq_len, generator=g)[:, :C] < t[:, None]  # (n, C)
            full = torch.cat([torch.zeros(n, len(c), dtype=torch.bool), masked], 1)
            weight = 1.0 / t
        else:
            full = torch.zeros(C, len(c) + C, dtype=torch.bool)
            for j in range(C):
                full[j, len(c) + j :] = True
            weight = torch.ones(C)
        x0, full = x0.to(dev), full.to(dev)
        xt = torch.where(full, mask_id, x0)
        prompt = torch.zeros_like(full)
        prompt[:, : len(c)] = True
        lp = torch.cat(
            [
                torch.log_softmax(
                    cfg_logits(fn, xt[s : s + batch], None, prompt[s : s + batch], mask_id, w), -1
                ).gather(-1, x0.expand_as(xt[s : s + batch])[..., None])[..., 0]
                for s in range(0, len(xt), batch)
            ]
        )  # (rows, L) log p of x0 at every position
        if estimator == "mc":
            per = torch.where(full, lp, 0.0).sum(1).double().cpu() * weight.double()
            out.append(float(per.mean()))
        else:
            out.append(float(sum(lp[j, len(c) + j] for j in range(C))))
    return out


def make_requests(args, vocab: int) -> list[tuple[list[int], list[int]]]:
    rng = random.Random(0)
    if args.data:
        from mdmctl.evaluation.benchmarks import TASKS
        from mdmctl.evaluation.likelihood import encode_pair
        from mdmctl.evaluation.zero_shot import task_requests, load_docs
        from mdmctl.tokenizer import load_tokenizer, train_bpe

        task = next(t for t in TASKS.values() if Path(args.data).name == t.file)
        docs, _ = load_docs(task, args.data, None)
        if args.tokenizer:
            tok = load_tokenizer(args.tokenizer)
        else:  # a BPE of the model's vocabulary size trained on the task's own text
            tok = train_bpe((d.context + "".join(d.choices) for d in docs), vocab)
        docs = docs[: max(1, args.requests // len(docs[0].choices))]
        return [encode_pair(tok, c, x) for c, x in task_requests(task, docs)]
    reqs = []
    for _ in range(args.requests // 4):
        ctx = [rng.randrange(3, vocab - 3) for _ in range(rng.randint(15, 45))]
        for _ in range(4):
            reqs.append((ctx, [rng.randrange(3, vocab - 3) for _ in range(rng.randint(2, 10))]))
    return reqs


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", default="tiny")
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--vocab", type=int, default=1024)
    ap.add_argument("--requests", type=int, default=128)
    ap.add_argument("--mc-samples", type=int, default=128)
    ap.add_argument("--cfg", type=float, default=0.0)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--naive-batch", type=int, default=32)
    ap.add_argument("--data", default=None)
    ap.add_argument("--tokenizer", default=None, help="tokenizer.json for --data")
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    from mdmctl.config import ModelConfig
    from mdmctl.evaluation.likelihood import ScoreConfig, loglikelihood
    from mdmctl.model import Transformer

    torch.manual_seed(0)
    dev = torch.device(args.device)
    mask_id = args.vocab - 1
    cfg = ModelConfig.from_name(
        args.size, vocab_size=args.vocab, mask_id=mask_id, seq_len=args.seq_len
    )
    model = Transformer(cfg).to(dev).eval()
    reqs = make_requests(args, args.vocab)
    print(
        f"{args.size} MDM, seq_len {args.seq_len}, vocab {args.vocab}, {len(reqs)} requests, "
        f"context {sum(len(c) for c, _ in reqs) / len(reqs):.0f} / continuation "
        f"{sum(len(x) for _, x in reqs) / len(reqs):.1f} tokens on average, cfg {args.cfg}, "
        f"{torch.get_num_threads()} threads on {dev.type}"
    )
    print(f"{'estimator':<22}{'naive req/s':>12}{'engine req/s':>14}{'ratio':>8}{'max |diff|':>12}")
    for est, n in (("mc", args.mc_samples), ("chain-rule", 1)):
        with torch.no_grad():
            t0 = time.perf_counter()
            ref = naive(model, reqs, est, n, args.cfg, 0, mask_id, args.naive_batch)
            t_naive = time.perf_counter() - t0
            sc = ScoreConfig(estimator=est, mc_samples=n, cfg=args.cfg, batch_size=args.batch_size)
            t0 = time.perf_counter()
            got = loglikelihood(model, reqs, sc, eos_id=0, device=dev)
            t_engine = time.perf_counter() - t0
        diff = max(abs(a - b.logprob) for a, b in zip(ref, got, strict=True))
        scale = max(abs(a) for a in ref)
        assert diff <= 1e-4 * max(1.0, scale), f"results differ by {diff}"
        name = f"{est}" + (f" x{n}" if est == "mc" else "")
        print(
            f"{name:<22}{len(reqs) / t_naive:>12.1f}{len(reqs) / t_engine:>14.1f}"
            f"{t_naive / t_engine:>8.2f}{diff:>12.2e}"
        )


if __name__ == "__main__":
    main()
