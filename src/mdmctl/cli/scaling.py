"""``mdmctl scaling plan|fit``: a thin layer over ``mdmctl.scaling`` (IsoFLOP sweeps)."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import typer

from mdmctl.cli.common import app, cli_errors, json_option, log_info, seed_option
from mdmctl.errors import ConfigError

scaling_app = typer.Typer(
    help="IsoFLOP scaling laws: plan a sweep of pretraining runs, fit the finished runs.",
    no_args_is_help=True,
)
app.add_typer(scaling_app, name="scaling")


def _floats(text: str, option: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ConfigError(f"{option}: expected comma-separated numbers, got {text!r}") from None
    if not values or not all(0 < v < float("inf") for v in values):
        raise ConfigError(f"{option}: expected finite numbers > 0, got {text!r}")
    return values


@scaling_app.command("plan")
def plan_cmd(
    flops: str = typer.Option(
        ..., "--flops", help="Compute budgets C = 6·N·D, comma-separated (e.g. 1e15,3e15,1e16)."
    ),
    objective: str = typer.Option("mdm,arm", "--objective", help="mdm, arm or both (mdm,arm)."),
    sizes: str = typer.Option(
        "19M,34M,48M,66M,85M,113M,170M,268M,472M",
        "--sizes",
        help="Model sizes along each curve: named sizes (SMDM's family, tiny, mini, small) or "
        "LxD shapes (L layers of width D, d_ff 4·D), comma-separated.",
    ),
    data: Path = typer.Option(Path("data/builtin"), "--data", help="Tokenized corpus."),
    batch_size: int = typer.Option(256, "--batch-size", min=1, help="Global batch (sequences)."),
    seq_len: int = typer.Option(2048, "--seq-len", min=1, help="Context length of every run."),
    min_steps: int = typer.Option(
        100, "--min-steps", min=1, help="Leave out sizes that get fewer optimizer steps."
    ),
    max_steps: int | None = typer.Option(
        None,
        "--max-steps",
        min=1,
        help="Leave out sizes that would need more optimizer steps. Default: no limit.",
    ),
    runs_dir: str = typer.Option("runs/scaling", "--runs-dir", help="Where the runs will go."),
    extra: str = typer.Option(
        "",
        "--extra",
        help="More pretrain options for every run, e.g. '--config sweep.toml'. Default: none.",
    ),
    out: Path = typer.Option(Path("sweep.sh"), "--out", help="The sweep script to write."),
    json_out: bool = json_option("Print the plan as JSON on stdout (the script is written too)."),
) -> None:
    """The runs of an IsoFLOP sweep, written as a resumable script of `mdmctl pretrain` runs."""
    with cli_errors():
        from dataclasses import asdict

        from rich.table import Table

        from mdmctl.fileio import atomic_write_text
        from mdmctl.log import results_console
        from mdmctl.scaling import plan, sweep_script

        objectives = [o.strip() for o in objective.split(",") if o.strip()]
        if not objectives or any(o not in ("mdm", "arm") for o in objectives):
            raise ConfigError(f"--objective: expected mdm, arm or mdm,arm, got {objective!r}")
        runs, skipped = plan(
            _floats(flops, "--flops"),
            objectives,
            [s.strip() for s in sizes.split(",") if s.strip()],
            batch_size=batch_size,
            seq_len=seq_len,
            out_root=runs_dir,
            min_steps=min_steps,
            max_steps=max_steps,
        )
        if not runs:
            raise ConfigError(
                "no run gets between --min-steps and --max-steps steps: change --flops or --sizes"
            )
        args = ["--batch-size", str(batch_size), "--seq-len", str(seq_len), *shlex.split(extra)]
        if out.is_dir():
            raise ConfigError(f"--out {out}: is a folder; name the script file")
        atomic_write_text(out, sweep_script(runs, str(data), args))
        out.chmod(0o755)
        if json_out:
            print(json.dumps({"runs": [asdict(r) for r in runs], "skipped": skipped}, indent=2))
            return
        console = results_console()
        t = Table(title=f"IsoFLOP sweep: {len(runs)} runs -> {out} (bash {out}; rerun to resume)")
        for col in ("objective", "C (FLOPs)", "size", "N", "D (tokens)", "D/N", "steps"):
            t.add_column(col)
        for r in runs:
            t.add_row(r.objective, f"{r.flops:.3g}", r.size, f"{r.n_params / 1e6:.2f}M",
                      f"{r.tokens:.3g}", f"{r.tokens / r.n_params:.1f}", str(r.steps))  # fmt: skip
        console.print(t)
        for s in skipped:
            console.print(f"left out: {s}", highlight=False)


@scaling_app.command("fit")
def fit_cmd(
    runs: list[Path] = typer.Argument(..., help="Run folders, or folders holding them."),
    out: Path | None = typer.Option(
        None, "--out", help="Write the fit as JSON here. Default: none (not written)."
    ),
    plot: Path | None = typer.Option(
        None,
        "--plot",
        help="Write a PNG plot here (pip install 'mdmctl[plot]'). Default: none (no plot).",
    ),
    bootstrap: int = typer.Option(
        200, "--bootstrap", min=0, help="Bootstrap resamples over runs (0: none)."
    ),
    seed: int = seed_option("Seed of the bootstrap."),
    json_out: bool = json_option("Print the fit as JSON on stdout."),
) -> None:
    """Fit IsoFLOP curves and power laws; with MDM and ARM runs, the compute gap and size ratio."""
    with cli_errors():
        from mdmctl.fileio import atomic_write_text
        from mdmctl.scaling import fit, read_runs
        from mdmctl.scaling import plot as plot_fit

        found = read_runs(runs)
        if not found:
            raise ConfigError("no finished pretraining runs (with a validation loss) found")
        res = fit(found, n_boot=bootstrap, seed=seed)
        if not res["frontiers"]:
            raise ConfigError("nothing to fit: " + "; ".join(res["skipped"]))
        if out:
            atomic_write_text(out, json.dumps(res, indent=1) + "\n")
            log_info(f"wrote {out}")
        if plot:
            plot_fit(res, plot)
            log_info(f"wrote {plot}")
        if json_out:
            print(json.dumps(res, indent=1))
            return
        _render_fit(res, len(found))


def _render_fit(res: dict, n_runs: int) -> None:
    from rich.table import Table

    from mdmctl.log import results_console

    console = results_console()

    t = Table(title=f"IsoFLOP fit of {n_runs} runs (MDM loss: ELBO bound; ARM: exact)")
    for col in ("objective", "C (FLOPs)", "runs", "N*", "L*"):
        t.add_column(col)
    for obj, fr in res["frontiers"].items():
        for b in fr["budgets"]:
            t.add_row(obj, f"{b['flops']:.3g}", str(b["n_runs"]), f"{b['n_opt'] / 1e6:.3g}M",
                      f"{b['loss_opt']:.4f}")  # fmt: skip
    console.print(t)
    for obj, fr in res["frontiers"].items():
        console.print(
            f"{obj}: N* ∝ C^{fr['n_exp']:.3f}, L* ∝ C^{fr['loss_exp']:.4f}", soft_wrap=True
        )
    boot = {a["flops"]: a for a in (res.get("bootstrap") or {}).get("at", [])}
    for c in res.get("comparison", []):
        line = (f"C={c['flops']:.3g}: the MDM needs {c['compute_gap']:.2f}x the compute for the "
                f"ARM's L*; N*_MDM / N*_ARM = {c['size_ratio']:.2f}")  # fmt: skip
        b = boot.get(c["flops"])
        if b and b["compute_gap"]:
            g, r = b["compute_gap"], b["size_ratio"]
            line += f" (95% bootstrap: gap {g[0]:.2f}-{g[2]:.2f}, ratio {r[0]:.2f}-{r[2]:.2f})"
        console.print(line, highlight=False, soft_wrap=True)
    for s in res["skipped"]:
        console.print(f"skipped: {s}", highlight=False)
