"""``mdmctl scaling plan|fit``: a thin layer over ``mdmctl.scaling`` (IsoFLOP sweeps)."""

from __future__ import annotations

import shlex
from pathlib import Path

import typer

from mdmctl.cli.common import app, cli_errors, log_info, print_json
from mdmctl.cli.options import SEED, Opt, Options, argument, command, json_out
from mdmctl.config import DEFAULT_DATA
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


@command(
    scaling_app,
    "plan",
    flops=Opt(("--flops",), str, ...,
              "Compute budgets C = 6·N·D, comma-separated (e.g. 1e15,3e15,1e16)."),
    objective=Opt(("--objective",), str, "mdm,arm", "mdm, arm or both (mdm,arm)."),
    sizes=Opt(("--sizes",), str, "19M,34M,48M,66M,85M,113M,170M,268M,472M",
              "Model sizes along each curve: named sizes (SMDM's family, tiny, mini, small) or "
              "LxD shapes (L layers of width D, d_ff 4·D), comma-separated."),
    data=Opt(("--data",), Path, Path(DEFAULT_DATA), "Tokenized corpus."),
    batch_size=Opt(("--batch-size",), int, 256, "Global batch (sequences).", min=1),
    seq_len=Opt(("--seq-len",), int, 2048, "Context length of every run.", min=1),
    min_steps=Opt(("--min-steps",), int, 100, "Leave out sizes that get fewer optimizer steps.",
                  min=1),
    max_steps=Opt(("--max-steps",), int | None, None,
                  "Leave out sizes that would need more optimizer steps. Default: no limit.",
                  min=1),
    runs_dir=Opt(("--runs-dir",), str, "runs/scaling", "Where the runs will go."),
    extra=Opt(("--extra",), str, "",
              "More pretrain options for every run, e.g. '--config sweep.toml'. Default: none."),
    out=Opt(("--out",), Path, Path("sweep.sh"), "The sweep script to write."),
    **json_out("Print the plan as JSON on stdout (the script is written too)."),
)  # fmt: skip
def plan(o: Options) -> None:
    """The runs of an IsoFLOP sweep, written as a resumable script of `mdmctl pretrain` runs."""
    with cli_errors():
        from dataclasses import asdict

        from mdmctl.fileio import atomic_write_text
        from mdmctl.scaling import plan as plan_runs
        from mdmctl.scaling import sweep_script

        objectives = [x.strip() for x in o.objective.split(",") if x.strip()]
        if not objectives or any(x not in ("mdm", "arm") for x in objectives):
            raise ConfigError(f"--objective: expected mdm, arm or mdm,arm, got {o.objective!r}")
        runs, skipped = plan_runs(
            _floats(o.flops, "--flops"), objectives,
            [s.strip() for s in o.sizes.split(",") if s.strip()], out_root=o.runs_dir,
            **o.pick("batch_size", "seq_len", "min_steps", "max_steps"),
        )  # fmt: skip
        if not runs:
            raise ConfigError(
                "no run gets between --min-steps and --max-steps steps: change --flops or --sizes"
            )
        args = ["--batch-size", str(o.batch_size), "--seq-len", str(o.seq_len),
                *shlex.split(o.extra)]  # fmt: skip
        if o.out.is_dir():
            raise ConfigError(f"--out {o.out}: is a folder; name the script file")
        atomic_write_text(o.out, sweep_script(runs, str(o.data), args))
        o.out.chmod(0o755)
        if o.json_out:
            print_json({"runs": [asdict(r) for r in runs], "skipped": skipped})
            return
        _render_plan(runs, skipped, o.out)


def _render_plan(runs: list, skipped: list[str], out: Path) -> None:
    from rich.table import Table

    from mdmctl.log import results_console

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


@command(
    scaling_app,
    "fit",
    runs=argument(list[Path], ..., "Run folders, or folders holding them."),
    out=Opt(("--out",), Path | None, None,
            "Write the fit as JSON here. Default: none (not written)."),
    plot=Opt(("--plot",), Path | None, None,
             "Write a PNG plot here (pip install 'mdmctl[plot]'). Default: none (no plot)."),
    bootstrap=Opt(("--bootstrap",), int, 200, "Bootstrap resamples over runs (0: none).", min=0),
    seed=SEED.but(help="Seed of the bootstrap."),
    **json_out("Print the fit as JSON on stdout."),
)  # fmt: skip
def fit(o: Options) -> None:
    """Fit IsoFLOP curves and power laws; with MDM and ARM runs, the compute gap and size ratio."""
    with cli_errors():
        import json

        from mdmctl.fileio import atomic_write_text
        from mdmctl.scaling import fit as fit_runs
        from mdmctl.scaling import plot as plot_fit
        from mdmctl.scaling import read_runs

        found = read_runs(o.runs)
        if not found:
            raise ConfigError("no finished pretraining runs (with a validation loss) found")
        res = fit_runs(found, n_boot=o.bootstrap, seed=o.seed)
        if not res["frontiers"]:
            raise ConfigError("nothing to fit: " + "; ".join(res["skipped"]))
        if o.out:
            atomic_write_text(o.out, json.dumps(res, indent=1) + "\n")
            log_info(f"wrote {o.out}")
        if o.plot:
            plot_fit(res, o.plot)
            log_info(f"wrote {o.plot}")
        if o.json_out:
            print_json(res, indent=1)
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
