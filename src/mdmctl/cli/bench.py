"""``mdmctl bench sample``: a thin layer over ``mdmctl.bench.bench_sample``."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from mdmctl.cli.common import app, cli_errors, device_option, finite_option, json_option, log_info

bench_app = typer.Typer(help="Benchmarks that run on your machine.", no_args_is_help=True,
                        rich_markup_mode=None)  # fmt: skip
app.add_typer(bench_app, name="bench")


@bench_app.command("sample")
def bench_sample_cmd(
    mdm: Path = typer.Option(
        ..., "--mdm", help="A fine-tuned MDM checkpoint (run or step folder)."
    ),
    arm: Path | None = typer.Option(
        None, "--arm", help="An ARM of the same size fine-tuned on the same data. Default: none."
    ),
    data_dir: Path = typer.Option(
        ...,
        "--data-dir",
        help="Folder of the prompt files: the reversal-curse test files "
        "(../shared/data/reversal_curse), or prompt/completion .jsonl files named by --split.",
    ),
    batch_size: int = typer.Option(64, "--batch-size", min=1, help="Batch of the throughput runs."),
    latency_prompts: int = typer.Option(
        16, "--latency-prompts", min=1, help="Prompts decoded one at a time for the latency."
    ),
    split: list[str] | None = typer.Option(
        None,
        "--split",
        help="Prompt files, repeatable: eval reverse-curse's split names (p2d_same, "
        "p2d_reverse, d2p_same, d2p_reverse) or a .jsonl file in --data-dir (e.g. the "
        "held-out both_prompts_test.jsonl). Default: p2d_same and d2p_same (the trained "
        "direction, where both objectives answer).",
    ),
    limit: int | None = typer.Option(
        None, "--limit", min=1, help="First N prompts of each file. Default: all."
    ),
    cfg: float = typer.Option(
        0.0, "--cfg", min=0, help="MDM unsupervised CFG for every setting.", callback=finite_option
    ),
    repeats: int = typer.Option(
        1,
        "--repeats",
        min=1,
        help="Time every setting this many times (in rounds over the settings) and keep the "
        "fastest: steadier ratios on a shared machine.",
    ),
    compile: bool = typer.Option(
        True,
        "--compile/--no-compile",
        help="Also time two fast MDM settings and the ARM through torch.compile (compiled in "
        "a warm-up outside the timings).",
    ),
    cuda_graphs: bool = typer.Option(
        True,
        "--cuda-graphs/--no-cuda-graphs",
        help="On a CUDA device, also time the plain, the window-4 dual-cache and the "
        "suffix-window-0 MDM settings and the ARM with CUDA graphs (recorded in a warm-up "
        "outside the timings).",
    ),
    device: str = device_option(),
    json_out: bool = json_option("Print the rows as JSON on stdout."),
) -> None:
    """MDM samplers (the naive reference, mdmctl's settings) and an ARM with its KV cache:
    throughput, latency, forwards and accuracy in one table of ratios."""
    with cli_errors():
        from rich.table import Table

        from mdmctl.bench import SPLITS, as_dicts, bench_sample, split_files, targets
        from mdmctl.log import results_console

        files = split_files(split or SPLITS)
        rows = bench_sample(mdm=str(mdm), arm=str(arm) if arm else None, data_dir=str(data_dir),
                            batch_size=batch_size, latency_prompts=latency_prompts, limit=limit,
                            cfg=cfg, repeats=repeats, compile=compile, device=device,
                            cuda_graphs=cuda_graphs, splits=files, log=log_info)  # fmt: skip
        if json_out:
            print(json.dumps(as_dicts(rows), indent=1))
            return
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
