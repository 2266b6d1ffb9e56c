"""Sample quality of a small model, measured crudely: the share of generated words that are words
of the built-in corpus, and how many distinct words there are, per sampler setting.

Used to choose the samplers of the Quick start's summary (docs/benchmarks.md, "First run"). The
baseline (ancestral, temperature 1, the true reverse process) runs in the same invocation, on the
same checkpoint and seeds; the script prints each setting's ratio to it.

    python benchmarks/sample_words.py runs/mdm-tiny-builtin --num-samples 32
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess

WORD = re.compile(r"[A-Za-z]{2,}")
SETTINGS = [("ancestral", "1.0"), ("confidence", "1.0"), ("confidence", "0.7")]


def corpus_words() -> set[str]:
    from mdmctl.data.builtin import iter_builtin_documents

    return {w.lower() for text, _ in iter_builtin_documents() for w in WORD.findall(text)}


def generated_words(ckpt: str, sampler: str, temp: str, n: int, length: int) -> list[str]:
    cmd = ["mdmctl", "sample", "--checkpoint", ckpt, "--num-samples", str(n), "--sampler",
           sampler, "--temperature", temp, "--length", str(length), "--seed", "0", "--json"]  # fmt: skip
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    return [w.lower() for line in out.splitlines() for w in WORD.findall(json.loads(line)["text"])]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkpoint")
    ap.add_argument("--num-samples", type=int, default=32)
    ap.add_argument("--length", type=int, default=63)
    args = ap.parse_args()
    vocab = corpus_words()
    base = None
    print(f"{'sampler':<12}{'T':>5}{'words':>8}{'in corpus':>11}{'distinct':>10}{'ratio':>8}")
    for sampler, temp in SETTINGS:
        words = generated_words(args.checkpoint, sampler, temp, args.num_samples, args.length)
        share = sum(w in vocab for w in words) / max(len(words), 1)
        base = base or share
        print(f"{sampler:<12}{temp:>5}{len(words):>8}{share:>11.3f}{len(set(words)):>10}"
              f"{share / base:>8.2f}")  # fmt: skip


if __name__ == "__main__":
    main()
