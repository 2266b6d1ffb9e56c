"""Which decoding choices decide whether a fine-tuned MDM *generates* the reverse fact?

    python examples/reverse_curse/decoding_study.py work/reverse_curse/mdm \
        --data-dir ../shared/data/reversal_curse [--splits p2d_reverse,d2p_same] [--limit N]

The likelihood ranking asks the model to score a name of known length; generation must also
decide where the answer ends. This script decodes the same prompts under variants of canvas
length, steps, remasking order, CFG scale and eos handling, and prints accuracy (the reference
appears in the generation) with its standard error per variant. It has its own small decoding
loop (temperature 0, one forward per step, the confidence schedule of ``mdmctl.sampling.mdm``:
after step k, round(length · (1 - (k+1)/steps)) positions stay masked) so that it can vary the
order; the ``smdm`` variant is checked against mdmctl's own sampler token for token.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from mdmctl.checkpoint import load_model
from mdmctl.evaluation.reverse_curse import SPLITS, is_hit
from mdmctl.sampling import SampleConfig, generate
from mdmctl.sampling.mdm import cfg_logits
from mdmctl.tokenizer import encode_literal


@dataclass(frozen=True)
class Variant:
    name: str
    total: int | None = 52  # prompt + generation (SMDM); None: the reference's own length
    steps: int | None = 32  # None: one token per step
    order: str = "confidence"  # confidence | margin | random | left-to-right
    cfg: float = 0.8
    ban_eos: int = 0  # eos is forbidden at the first n generated positions


VARIANTS = [
    Variant("smdm"),
    Variant("no-cfg", cfg=0.0),
    Variant("cfg-2", cfg=2.0),
    Variant("total-36, 1 token/step", total=36, steps=None),
    Variant("order margin", order="margin"),
    Variant("order random", order="random"),
    Variant("order left-to-right", order="left-to-right", steps=None),
    Variant("no eos at first 2", ban_eos=2),
    Variant("oracle length, no eos", total=None, steps=None, ban_eos=10**6),
    Variant("oracle length, no eos, no cfg", total=None, steps=None, ban_eos=10**6, cfg=0.0),
]


@torch.no_grad()
def decode(
    model,
    prompts: list[list[int]],
    n_gen: list[int],
    v: Variant,
    eos_id: int,
    pad_id: int,
    seed: int,
) -> list[list[int]]:
    """Generate ``n_gen[b]`` tokens after each prompt. Ragged rows are right-padded and the padding
    is its own attention segment, as in ``mdmctl.sampling.mdm``. Returns the generated ids."""
    mask_id = model.cfg.mask_id
    B = len(prompts)
    plen, ngen = torch.tensor([len(p) for p in prompts]), torch.tensor(n_gen)
    T = int((plen + ngen).max())
    pos = torch.arange(T)[None, :].expand(B, T)
    x = torch.full((B, T), pad_id, dtype=torch.long)
    for b, p in enumerate(prompts):
        x[b, : len(p)] = torch.tensor(p)
    prompt_mask = pos < plen[:, None]
    gen_pos = ~prompt_mask & (pos < (plen + ngen)[:, None])  # (B, T)
    x[gen_pos] = mask_id
    doc_ids = (~(prompt_mask | gen_pos)).long()
    docs = doc_ids if bool(doc_ids.any()) else None
    no_eos = gen_pos & (pos - plen[:, None] < v.ban_eos)
    gen = torch.Generator().manual_seed(seed)
    steps = v.steps or int(ngen.max())
    for k in range(steps):
        masked = x == mask_id  # (B, T)
        if not bool(masked.any()):
            break
        logits = cfg_logits(lambda z, d: model(z, doc_ids=d), x, docs, prompt_mask, mask_id, v.cfg)
        logits = logits.float()
        logits[..., eos_id] = torch.where(no_eos, -math.inf, logits[..., eos_id])
        probs = logits.softmax(-1)  # (B, T, V)
        top = probs.topk(2, dim=-1).values  # (B, T, 2)
        cand = probs.argmax(-1)
        score = {
            "confidence": top[..., 0],
            "margin": top[..., 0] - top[..., 1],
            "random": torch.rand(B, T, generator=gen),
            "left-to-right": -pos.float(),
        }[v.order]
        score = torch.where(masked, score, -math.inf)
        # after this step round(n · s) of a row's n generated positions stay masked
        keep = torch.round(ngen * (1 - (k + 1) / steps)).long()
        n_reveal = (masked.sum(1) - keep).clamp(min=0)  # (B,)
        rank = score.argsort(1, descending=True).argsort(1)
        reveal = (rank < n_reveal[:, None]) & masked
        x = torch.where(reveal, cand, x)
    return [x[b, gen_pos[b]].tolist() for b in range(B)]


def texts(tok, ids: list[list[int]], eos_id: int) -> list[str]:
    out = []
    for row in ids:
        row = row[: row.index(eos_id)] if eos_id in row else row
        out.append(tok.decode(row, skip_special_tokens=True))
    return out


def run_variant(model, tok, info, rows, v: Variant, seed: int, batch: int = 100) -> list[str]:
    p_ids = [encode_literal(tok, r["prompt"]) for r in rows]
    if v.total is None:
        n_gen = [len(encode_literal(tok, r["completion"])) for r in rows]
    else:
        n_gen = [max(8, v.total - len(p)) for p in p_ids]
    out: list[str] = []
    for s in range(0, len(rows), batch):
        ids = decode(
            model, p_ids[s : s + batch], n_gen[s : s + batch], v, info.eos_id, info.pad_id, seed
        )
        out += texts(tok, ids, info.eos_id)
    return out


def check_against_mdmctl(model, tok, info, rows, device) -> None:
    """The ``smdm`` variant must equal mdmctl's confidence sampler (eval reverse-curse)."""
    cfg = SampleConfig.create(steps=32, sampler="confidence", temperature=0.0, cfg=0.8, batch_size=64)
    plen = [len(encode_literal(tok, r["prompt"])) for r in rows]
    g = generate(
        model, tok, info, [r["prompt"] for r in rows], cfg, device, [max(8, 52 - n) for n in plen]
    )
    ours = run_variant(model, tok, info, rows, VARIANTS[0], 0)
    same = sum(a == b for a, b in zip(ours, g.texts, strict=True))
    print(f"check: smdm variant equals mdmctl's sampler on {same}/{len(rows)} prompts")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("checkpoint")
    ap.add_argument("--data-dir", default="../shared/data/reversal_curse")
    ap.add_argument("--splits", default="p2d_reverse,d2p_same")
    ap.add_argument("--limit", type=int, default=None)
    ap.add_argument("--out", default=None, help="jsonl of every generation")
    ap.add_argument("--variants", default=None, help="variant names separated by ; (default all)")
    ap.add_argument("--no-check", action="store_true", help="skip the check against mdmctl")
    args = ap.parse_args()
    torch.set_grad_enabled(False)
    model, tok, info, step_dir, device = load_model(args.checkpoint, "cpu")
    splits = args.splits.split(",")
    data = {}
    for s in splits:
        lines = (Path(args.data_dir) / SPLITS[s][0]).read_text().splitlines()
        data[s] = [json.loads(x) for x in lines][: args.limit]
    if not args.no_check:
        check_against_mdmctl(model, tok, info, data[splits[0]], device)
    chosen = args.variants.split(";") if args.variants else [v.name for v in VARIANTS]
    print(f"checkpoint {step_dir}; accuracy ± standard error (n = {len(data[splits[0]])})\n")
    print("| variant | " + " | ".join(splits) + " | seconds |")
    print("|---|" + "---|" * (len(splits) + 1))
    dump = []
    for v in (v for v in VARIANTS if v.name in chosen):
        t0, cells = time.perf_counter(), []
        for s in splits:
            gens = run_variant(model, tok, info, data[s], v, 0)
            hits = [is_hit(g, r["completion"]) for g, r in zip(gens, data[s], strict=True)]
            n, p = len(hits), sum(hits) / len(hits)
            cells.append(f"{p:.3f} ± {math.sqrt(p * (1 - p) / max(1, n - 1)):.3f}")
            dump += [
                {"variant": v.name, "split": s, "generation": g, **r}
                for g, r in zip(gens, data[s], strict=True)
            ]
        print(
            f"| {v.name} | " + " | ".join(cells) + f" | {time.perf_counter() - t0:.0f} |",
            flush=True,
        )
    if args.out:
        Path(args.out).write_text("".join(json.dumps(d) + "\n" for d in dump))


if __name__ == "__main__":
    main()
