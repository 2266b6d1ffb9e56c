"""``mdmctl bench sample``: a thin layer over ``mdmctl.bench.bench_sample``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from mdmctl.cli.common import app, cli_errors, log_info, print_json
from mdmctl.cli.options import CFG, DEVICE, Opt, Options, command, json_out, limit

bench_app = typer.Typer(help="Benchmarks that run on your machine.", no_args_is_help=True,
                        rich_markup_mode=None)  # fmt: skip
app.add_typer(bench_app, name="bench")


@command(
    bench_app,
    "sample",
    mdm=Opt(("--mdm",), Path, ..., "A fine-tuned MDM checkpoint (run or step folder)."),
    arm=Opt(("--arm",), Path | None, None,
            "An ARM of the same size fine-tuned on the same data. Default: none."),
    data_dir=Opt(("--data-dir",), Path, ...,
                 "Folder of the prompt files: the reversal-curse test files "
                 "(../shared/data/reversal_curse), or prompt/completion .jsonl files named by "
                 "--split."),
    batch_size=Opt(("--batch-size",), int, 64, "Batch of the throughput runs.", min=1),
    latency_prompts=Opt(("--latency-prompts",), int, 16,
                        "Prompts decoded one at a time for the latency.", min=1),
    split=Opt(("--split",), list[str] | None, None,
              "Prompt files, repeatable: eval reverse-curse's split names (p2d_same, "
              "p2d_reverse, d2p_same, d2p_reverse) or a .jsonl file in --data-dir (e.g. the "
              "held-out both_prompts_test.jsonl). Default: p2d_same and d2p_same (the trained "
              "direction, where both objectives answer)."),
    limit=limit("prompts of each file"),
    cfg=CFG.but(help="MDM unsupervised CFG for every setting."),
    repeats=Opt(("--repeats",), int, 1,
                "Time every setting this many times (in rounds over the settings) and keep the "
                "fastest: steadier ratios on a shared machine.", min=1),
    compile=Opt(("--compile/--no-compile",), bool, True,
                "Also time two fast MDM settings and the ARM through torch.compile (compiled in "
                "a warm-up outside the timings)."),
    cuda_graphs=Opt(("--cuda-graphs/--no-cuda-graphs",), bool, True,
                    "On a CUDA device, also time the plain, the window-4 dual-cache and the "
                    "suffix-window-0 MDM settings and the ARM with CUDA graphs (recorded in a "
                    "warm-up outside the timings)."),
    device=DEVICE,
    **json_out("Print the rows as JSON on stdout."),
)  # fmt: skip
def bench_sample(o: Options) -> None:
    """MDM samplers (the naive reference, mdmctl's settings) and an ARM with its KV cache:
    throughput, latency, forwards and accuracy in one table of ratios."""
    with cli_errors():
        from mdmctl.bench import SPLITS, as_dicts, split_files
        from mdmctl.bench import bench_sample as run_bench

        files = split_files(o.split or SPLITS)
        rows = run_bench(mdm=str(o.mdm), arm=str(o.arm) if o.arm else None,
                         data_dir=str(o.data_dir), splits=files, log=log_info,
                         **o.pick("batch_size", "latency_prompts", "limit", "cfg", "repeats",
                                  "compile", "device", "cuda_graphs"))  # fmt: skip
        if o.json_out:
            print_json(as_dicts(rows), indent=1)
            return
        _render(rows, files, o.batch_size)


def _render(rows: list[Any], files: list[str], batch_size: int) -> None:
    from rich.table import Table

    from mdmctl.bench import targets
    from mdmctl.log import results_console

    labels = " + ".join(files)
    t = Table(title=f"sampling on {labels} (batch {batch_size})")
    for col in ("setting", "prompts/s", "x naive", "tokens/s", "x ARM", "NFE/answer",
                "latency s", "x naive", "batch-1 tokens/s", "x ARM",
                f"accuracy ({' / '.join(files)})", "vs naive",
                "vs ARM", "same as naive"):  # fmt: skip
        t.add_column(col)
    for r in rows:
        t.add_row(r.setting, f"{r.prompts_per_s:.1f}", f"{r.speedup:.2f}",
                  f"{r.tokens_per_s:.0f}", _opt(r.arm_tokens_ratio, ".2f"),
                  f"{r.nfe_per_prompt:.1f}", f"{r.latency_s:.4f}",
                  f"{r.latency_speedup:.2f}", f"{r.latency_tokens_per_s:.0f}",
                  _opt(r.arm_latency_tokens_ratio, ".2f"),
                  f"{r.accuracy:.3f} ± {r.stderr:.3f} ({_by_file(r)})",
                  f"{r.delta:+.3f} ± {r.delta_stderr:.3f}",
                  "" if r.vs_arm is None else f"{r.vs_arm:+.3f} ± {r.vs_arm_stderr:.3f}",
                  _opt(r.agreement, ".3f"))  # fmt: skip
    console = results_console()
    console.print(t)
    console.print(f"on {rows[0].hardware}")
    for line in targets(rows):
        console.print(line)


def _by_file(r) -> str:
    return " / ".join(f"{a:.2f}" for a in r.accuracy_by_file.values())


def _opt(x: float | None, fmt: str) -> str:
    return "" if x is None else format(x, fmt)
