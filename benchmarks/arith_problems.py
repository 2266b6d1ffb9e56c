"""Synthetic GSM8K-style word problems for a sampling benchmark both objectives can learn.

On the reversal-curse pair the 6M MDM stays about 15 points below the ARM (docs/benchmarks.md),
so "the ARM's tokens/s at equal quality" cannot be read off it. These problems separate the
sampler's speed from the model's accuracy: every answer is fixed by its question (one
single-digit addition or multiplication, written as GSM8K's equation chain of thought,
``<<a*b=c>> #### c``), so a small model of either objective learns them in minutes on a CPU.
Writes ``train.jsonl`` and ``test.jsonl`` (prompt / completion, ``bench sample --split``'s
format; no test question appears among the training questions, the arithmetic facts do: the
test asks for the skill, not for unseen sums) and ``text.jsonl`` (each training problem as one
text, for ``mdmctl tokenize``).

    python benchmarks/arith_problems.py OUT_DIR [--train 20000] [--test 600] [--seed 0] [--digits 1]
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

NAMES = ("Ann", "Ben", "Carla", "Dev", "Elif", "Femi", "Gus", "Hana", "Ivo", "Jun", "Kira",
         "Liam", "Mona", "Nils", "Omar", "Pia", "Quinn", "Rosa", "Sami", "Tara", "Uma", "Vic",
         "Wen", "Yara", "Zed")  # fmt: skip
ITEMS = ("apples", "pens", "books", "marbles", "stamps", "shells", "cards", "cookies", "coins",
         "stickers", "plums", "beads", "cups", "kites", "socks", "rocks")  # fmt: skip
ADD = (
    "{n} has {a} {i} and gets {b} more. How many {i} does {n} have now?",
    "{n} picks {a} {i} in the morning and {b} {i} in the afternoon. How many {i} in all?",
    "There are {a} {i} in a box and {n} puts in {b} more. How many {i} are in the box?",
)
MUL = (
    "{n} buys {a} bags with {b} {i} in each bag. How many {i} does {n} buy?",
    "{n} has {a} shelves and puts {b} {i} on each shelf. How many {i} are on the shelves?",
    "Each of {a} friends gives {n} {b} {i}. How many {i} does {n} get?",
)


def problem(rng: random.Random, digits: int = 1) -> dict[str, str]:
    """One problem; ``digits`` > 1: operands of that many digits, a single-digit multiplier
    (two-digit sums carry: a harder task, meant for a pair whose samplers' accuracies differ;
    at arith_pair.sh's default budget only the ARM learns it, docs/benchmarks.md)."""
    lo = 2 if digits == 1 else 10 ** (digits - 1)
    a, b = rng.randint(lo, 10**digits - 1), rng.randint(lo, 10**digits - 1)
    op, templates = rng.choice((("+", ADD), ("*", MUL)))
    if op == "*" and digits > 1:
        a = 2 + a % 8
    c = a + b if op == "+" else a * b
    q = rng.choice(templates).format(n=rng.choice(NAMES), i=rng.choice(ITEMS), a=a, b=b)
    return {"prompt": q, "completion": f" <<{a}{op}{b}={c}>> #### {c}"}


def write(out: Path, n_train: int, n_test: int, seed: int, digits: int = 1) -> None:
    rng = random.Random(seed)
    train = [problem(rng, digits) for _ in range(n_train)]
    seen = {r["prompt"] for r in train}
    test: list[dict[str, str]] = []
    while len(test) < n_test:  # held-out questions: none is a training question
        r = problem(rng, digits)
        if r["prompt"] not in seen:
            seen.add(r["prompt"])
            test.append(r)
    out.mkdir(parents=True, exist_ok=True)
    text = [{"text": r["prompt"] + r["completion"]} for r in train]  # the tokenizer's corpus
    for name, rows in (("train", train), ("test", test), ("text", text)):
        with open(out / f"{name}.jsonl", "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--train", type=int, default=20000)
    ap.add_argument("--test", type=int, default=600)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--digits", type=int, default=1, choices=(1, 2, 3))
    args = ap.parse_args()
    write(args.out, args.train, args.test, args.seed, args.digits)


if __name__ == "__main__":
    main()
