"""Progress bar and summary shared by ``mdmctl pretrain`` and ``mdmctl finetune``."""

from __future__ import annotations

import json
from typing import Any


def with_train_progress(fn: Any) -> Any:
    """Run a training call with progress (ETA, loss, lr, tokens/s, val, MFU): a bar on a
    terminal, a line every 30 s in a log file.

    Under torchrun only rank 0 shows it (the library calls ``on_step`` on rank 0 only)."""
    from mdmctl.cli.common import launch_rank
    from mdmctl.progress import ProgressReporter

    if launch_rank() != 0:
        return fn(None)
    with ProgressReporter("train") as bar:
        last_val: dict[str, float] = {}

        def on_step(step: int, total: int, rec: dict[str, Any]) -> None:
            if "val_loss" in rec:
                last_val["v"] = rec["val_loss"]
            status = f"loss {rec['loss']:.3f}  lr {rec['lr']:.2e}  {rec['tokens_per_s']:.0f} tok/s"
            if "v" in last_val:
                status += f"  val {last_val['v']:.3f}"
            if "mfu" in rec:
                status += f"  MFU {rec['mfu']:.1%}"
            bar.update(step, total, status)

        return fn(on_step)


def render_train_summary(r: Any, samples: list[str], json_out: bool) -> None:
    if getattr(r, "rank", 0) != 0:
        return  # under torchrun, rank 0 reports for the run
    world, parallel = getattr(r, "world_size", 1), getattr(r, "parallel", "none")
    from rich.markup import escape
    from rich.table import Table

    from mdmctl.log import results_console

    summary = {
        "run_dir": str(r.run_dir),
        "checkpoint": str(r.checkpoint),
        "steps": r.steps,
        "tokens": r.tokens,
        "val_loss": r.val_loss,
        "val_loss_kind": r.val_loss_kind,
        "unigram_entropy": r.unigram_entropy,
        "train_loss": r.train_loss,
        "tokens_per_s": r.tokens_per_s,
        "seconds": r.seconds,
        "peak_rss_mb": r.peak_rss_mb,
        "n_params_non_embedding": r.n_params_non_embedding,
        "device": r.device,
        "attention": r.attention,
        "resumed_from": r.resumed_from,
        "nonfinite_skips": r.nonfinite_skips,
        "world_size": world,
        "parallel": parallel,
        "samples": samples,
    }
    if json_out:
        print(json.dumps(summary, indent=2))
        return
    t = Table(title="training summary", show_header=False)
    t.add_row("run", str(r.run_dir))
    t.add_row("checkpoint", str(r.checkpoint))
    t.add_row("steps / tokens", f"{r.steps:,} / {r.tokens:,}")
    if r.nonfinite_skips:
        # Skipped updates are silent in the loss curve: the summary must say the run had them.
        t.add_row("non-finite steps skipped", f"{r.nonfinite_skips:,} (no update applied)")
    t.add_row(f"val loss ({r.val_loss_kind})", f"{r.val_loss:.4f} nats/token")
    if r.unigram_entropy is not None:
        t.add_row("unigram entropy of the corpus", f"{r.unigram_entropy:.4f} nats/token")
        t.add_row("better than unigram by", f"{r.unigram_entropy - r.val_loss:+.4f} nats/token")
    where = f"{r.device} ({r.attention})"
    if world > 1:
        where = f"{world} x {where}, {parallel}"
    t.add_row("throughput", f"{r.tokens_per_s:,.0f} tokens/s on {where}")
    t.add_row("wall time", f"{r.seconds:.0f} s")
    t.add_row("peak RSS", f"{r.peak_rss_mb:,.0f} MB")
    out = results_console()
    out.print(t)
    for i, s in enumerate(samples):
        out.print(f"[bold]sample {i + 1}:[/] {escape(repr(s))}")  # text may hold [brackets]


def after_training(r: Any, json_out: bool) -> None:
    """The loss curve beside metrics.jsonl, and a one-line hint of what to do next (stderr)."""
    if getattr(r, "rank", 0) != 0:
        return
    from pathlib import Path

    from mdmctl.cli.common import log_info
    from mdmctl.errors import ConfigError
    from mdmctl.log import console
    from mdmctl.run_summary import plot_loss_curve

    try:
        log_info(f"wrote {plot_loss_curve(Path(r.run_dir))}")
    except ConfigError as e:  # matplotlib is an optional extra
        log_info(f"loss curve skipped: {e}")
    if not json_out:
        console.print(
            f"next: mdmctl sample --checkpoint {r.run_dir} --prompt 'The'  |  "
            f"mdmctl eval ppl --checkpoint {r.run_dir}  |  mdmctl runs",
            highlight=False,
            soft_wrap=True,
        )
