"""``mdmctl eval lm-eval``: run lm-evaluation-harness tasks on a checkpoint through the adapter."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from mdmctl.errors import ConfigError


def _parse_model_args(s: str) -> dict[str, str]:
    out = {}
    for part in filter(None, (p.strip() for p in s.split(","))):
        if "=" not in part:
            raise ConfigError(f"--model-args: expected key=value, got {part!r}")
        k, v = part.split("=", 1)
        out[k.strip()] = v.strip()
    return out


def run_lm_eval(
    *,
    tasks: list[str],
    checkpoint: str | None,
    model_args: str = "",
    num_fewshot: int | None = None,
    limit: float | None = None,
    batch_size: int = 32,
    device: str = "auto",
    include_path: str | None = None,
    output: str | None = None,
    bootstrap_iters: int = 100000,
) -> dict[str, Any]:
    """lm-eval's results dict plus a rendered ``table``."""
    import lm_eval
    from lm_eval.tasks import TaskManager
    from lm_eval.utils import make_table

    from mdmctl.evaluation.lm_eval_adapter import MdmctlLM  # raises ConfigError without lm-eval

    if not tasks:
        raise ConfigError("--tasks: name at least one task")
    kw: dict[str, Any] = _parse_model_args(model_args)
    if "checkpoint" in kw and checkpoint:
        raise ConfigError("give the checkpoint once: --checkpoint or checkpoint= in --model-args")
    kw.setdefault("checkpoint", checkpoint)
    kw.setdefault("batch_size", batch_size)
    kw.setdefault("device", device)
    try:
        lm = MdmctlLM(**kw)
    except TypeError as e:
        raise ConfigError(f"--model-args: {e}") from None
    tm = TaskManager(include_path=include_path) if include_path else TaskManager()
    unknown = [t for t in tasks if t not in tm.all_tasks]
    if unknown:
        raise ConfigError(f"--tasks: unknown lm-eval task {unknown[0]!r}")
    if limit is not None and limit >= 1:
        limit = int(limit)
    res = lm_eval.simple_evaluate(
        model=lm,
        tasks=tasks,
        num_fewshot=num_fewshot,
        limit=limit,
        task_manager=tm,
        log_samples=False,
        bootstrap_iters=bootstrap_iters,
    )
    if output:
        p = Path(output)
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(
            json.dumps(
                {"results": res["results"], "configs": res.get("configs")}, indent=1, default=str
            )
        )
    return {"results": res["results"], "table": make_table(res)}
