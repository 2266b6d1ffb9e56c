"""The finished pretraining runs of a sweep, as the fits read them."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path

from mdmctl.config import ModelConfig
from mdmctl.errors import DataError
from mdmctl.scaling.isoflop import Run


def read_runs(paths: Sequence[Path]) -> list[Run]:
    """Finished runs under ``paths`` (run folders, or folders holding them): N and the objective
    from config.json, C from ``train.flops`` (else the run's FLOPs per token times its tokens), D
    from the steps trained, the loss from the last validation in metrics.jsonl. Folders without
    a validation are skipped, not guessed."""
    runs = []
    for root in paths:
        if not root.exists():
            raise DataError(f"{root}: no such run folder")
        for cfg_path in sorted(root.glob("**/config.json")):
            run = read_run(cfg_path.parent)
            if run is not None:
                runs.append(run)
    return runs


def read_run(d: Path) -> Run | None:
    try:
        cfg = json.loads((d / "config.json").read_text())
        model = ModelConfig.from_dict(cfg["model"])
        train = cfg["train"]
        tokens_per_step = int(train["batch_size"]) * model.seq_len
    except (ValueError, KeyError, TypeError, OSError) as e:
        raise DataError(f"{d / 'config.json'}: not an mdmctl run config ({e})") from None
    if "sft" in cfg:
        return None  # a fine-tune: not on a pretraining IsoFLOP curve
    loss, steps = None, 0
    metrics = d / "metrics.jsonl"
    if metrics.is_file():
        for line in metrics.read_text().splitlines():
            try:
                rec = json.loads(line)
            except ValueError:
                continue  # a torn last line after a kill
            steps = max(steps, int(rec.get("step", 0)))
            if rec.get("val_loss") is not None:
                loss = float(rec["val_loss"])
    if loss is None or not math.isfinite(loss):
        return None
    convention = train.get("flops_convention", "paper")
    tokens = float(steps * tokens_per_step)
    c = train.get("flops") or model.train_flops_per_token(convention) * tokens
    return Run(str(d), model.objective, model.n_params_non_embedding, float(c), loss, tokens,
               convention)  # fmt: skip
