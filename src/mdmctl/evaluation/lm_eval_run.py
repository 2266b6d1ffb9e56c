"""``mdmctl eval lm-eval``: run lm-evaluation-harness tasks on a checkpoint through the adapter."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from mdmctl.errors import ConfigError, DataError

# What a dataset download raises offline or without a network (huggingface_hub, datasets,
# requests, urllib3): matched by class name anywhere in the exception's chain, since each
# library wraps the others' errors.
_NETWORK_ERRORS = {
    "OfflineModeIsEnabled",
    "LocalEntryNotFoundError",
    "ConnectionError",
    "ConnectTimeout",
    "ReadTimeout",
    "MaxRetryError",
    "NameResolutionError",
}
LOCAL_TASK_HINT = (
    "offline? run a local task: --include-path DIR with a task YAML over local files "
    "(docs/cli.md, 'A local lm-eval task')"
)


def _network_cause(e: BaseException) -> str | None:
    """The name of the network error behind ``e`` (through __cause__ / __context__), if any."""
    seen: set[int] = set()
    cur: BaseException | None = e
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        names = {c.__name__ for c in type(cur).__mro__}
        if names & _NETWORK_ERRORS:
            return type(cur).__name__
        cur = cur.__cause__ or cur.__context__
    return None


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
    # First: without the optional extra this raises the ConfigError that names it.
    from mdmctl.evaluation.lm_eval_adapter import MdmctlLM

    # isort: split
    import lm_eval
    from lm_eval.tasks import TaskManager
    from lm_eval.utils import make_table

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
    # '-' and '_' are interchangeable in task names (arc-easy = arc_easy), as everywhere in mdmctl.
    by_key = {t.replace("-", "_"): t for t in tm.all_tasks}
    tasks = [t if t in tm.all_tasks else by_key.get(t.replace("-", "_"), t) for t in tasks]
    unknown = [t for t in tasks if t not in tm.all_tasks]
    if unknown:
        raise ConfigError(f"--tasks: unknown lm-eval task {unknown[0]!r}")
    if limit is not None and limit >= 1:
        limit = int(limit)
    try:
        res = lm_eval.simple_evaluate(
            model=lm,
            tasks=tasks,
            num_fewshot=num_fewshot,
            limit=limit,
            task_manager=tm,
            log_samples=False,
            bootstrap_iters=bootstrap_iters,
        )
    except Exception as e:
        cause = _network_cause(e)
        if cause is None:
            raise
        raise DataError(
            f"--tasks {','.join(tasks)}: a dataset could not be fetched from the hub ({cause}); "
            + LOCAL_TASK_HINT
        ) from None
    if output:
        p = Path(output)
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(
            json.dumps(
                {"results": res["results"], "configs": res.get("configs")}, indent=1, default=str
            )
        )
    return {"results": res["results"], "table": make_table(res)}
