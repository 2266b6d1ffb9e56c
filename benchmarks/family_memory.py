"""The memory planner's inference plan for LLaDA 8B's and Dream 7B's shapes (bf16 weights).

    python benchmarks/family_memory.py

Shapes from the families' config.json fields; an estimate (``memory.estimate_inference``), not a
measurement: no 8B weights were loaded here."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from mdmctl.interop import families
from mdmctl.memory import estimate_inference, gib

LLADA_8B = {"d_model": 4096, "n_heads": 32, "n_layers": 32, "mlp_hidden_size": 12288,
            "rope_theta": 500000.0, "max_sequence_length": 4096}  # fmt: skip
DREAM_7B = {"hidden_size": 3584, "num_attention_heads": 28, "num_key_value_heads": 4,
            "num_hidden_layers": 28, "intermediate_size": 18944, "rope_theta": 1e6}  # fmt: skip

if __name__ == "__main__":
    where = Path("config.json")
    shapes = [("LLaDA 8B", families.llada_config(LLADA_8B, where, None), 126464),
              ("Dream 7B", families.dream_config(DREAM_7B, where, None), 152064)]  # fmt: skip
    print("model | parameters | bf16 weights | one forward, batch 1 / 8 (context 4096)")
    for name, cfg, vocab in shapes:
        cfg = replace(cfg, vocab_size=vocab)
        rows = [gib(estimate_inference(cfg, b, act_bytes=2)) for b in (1, 8)]
        print(f"{name} | {cfg.n_params:,} | {gib(2 * cfg.n_params)} | {' / '.join(rows)}")
