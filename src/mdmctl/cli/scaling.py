"""``mdmctl scaling plan|fit``: a thin layer over ``mdmctl.scaling`` (IsoFLOP sweeps)."""

from __future__ import annotations

import math
import shlex
from pathlib import Path

import typer

from mdmctl.cli.common import app, cli_errors, log_info, print_json
from mdmctl.cli.options import (
    SEED,
    Opt,
    Options,
    argument,
    choice,
    command,
    from_field,
    json_out,
)
from mdmctl.config import DEFAULT_DATA, TrainConfig
from mdmctl.errors import ConfigError
from mdmctl.scaling.compare import MAX_EXTRAPOLATION
from mdmctl.scaling.isoflop import FRONTIER_FORMS

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
              "Compute budgets C, comma-separated (e.g. 1e15,3e15,1e16), counted by "
              "--flops-convention."),
    flops_convention=from_field(TrainConfig, "flops_convention"),
    vocab_size=Opt(("--vocab-size",), int | None, None,
                   "Vocabulary, for --flops-convention full (the head). Default: the --data "
                   "corpus's.", min=2),
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
    centre=Opt(("--centre",), str | None, None,
               "n0,a: keep the --per-budget sizes nearest the expected optimum N*(C) = n0·C^a "
               "(from a law you trust, or a pilot sweep's fit: its 'n_log_coef' is ln n0, "
               "'n_exp' is a). Default: every size."),
    per_budget=Opt(("--per-budget",), int, 7, "With --centre: sizes kept per budget.", min=3),
    dn_window=Opt(("--dn-window",), str | None, None,
                  "lo,hi: keep sizes whose tokens per parameter D/N lie inside. Default: any."),
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
        from mdmctl.scaling import SweepShape, sweep_script
        from mdmctl.scaling import plan as plan_runs

        objectives = [x.strip() for x in o.objective.split(",") if x.strip()]
        if not objectives or any(x not in ("mdm", "arm") for x in objectives):
            raise ConfigError(f"--objective: expected mdm, arm or mdm,arm, got {o.objective!r}")
        shape = SweepShape(
            o.batch_size, o.seq_len, _vocab(o), o.flops_convention, o.min_steps, o.max_steps,
            _pair(o.centre, "--centre"), o.per_budget, _pair(o.dn_window, "--dn-window"),
        )  # fmt: skip
        runs, skipped, warnings = plan_runs(
            _floats(o.flops, "--flops"), objectives,
            [s.strip() for s in o.sizes.split(",") if s.strip()], shape, o.runs_dir,
        )  # fmt: skip
        if not runs:
            raise ConfigError(
                "no run gets between --min-steps and --max-steps steps: change --flops or --sizes"
            )
        args = ["--batch-size", str(o.batch_size), "--seq-len", str(o.seq_len),
                *(["--flops-convention", o.flops_convention] if o.flops_convention != "paper"
                  else []), *shlex.split(o.extra)]  # fmt: skip
        if o.out.is_dir():
            raise ConfigError(f"--out {o.out}: is a folder; name the script file")
        atomic_write_text(o.out, sweep_script(runs, str(o.data), args))
        o.out.chmod(0o755)
        if o.json_out:
            print_json({"runs": [asdict(r) for r in runs], "skipped": skipped,
                        "warnings": warnings})  # fmt: skip
            return
        _render_plan(runs, skipped, warnings, o.out)


def _pair(text: str | None, option: str) -> tuple[float, float] | None:
    if text is None:
        return None
    values = _floats(text, option) if "," in text else []
    if len(values) != 2:
        raise ConfigError(f"{option}: expected two numbers 'a,b', got {text!r}")
    return values[0], values[1]


def _vocab(o: Options) -> int:
    """--vocab-size, else the --data corpus's (0 when neither is known: the paper's count does
    not need it)."""
    if o.vocab_size:
        return o.vocab_size
    if (o.data / "corpus.json").is_file():
        from mdmctl.data.shards import read_manifest

        return int(read_manifest(o.data).meta["tokenizer"]["vocab_size"])
    return 0


def _render_plan(runs: list, skipped: list[str], warnings: list[str], out: Path) -> None:
    from rich.table import Table

    from mdmctl.log import results_console
    from mdmctl.scaling import count

    console = results_console()
    t = Table(title=f"IsoFLOP sweep: {len(runs)} runs -> {out} (bash {out}; rerun to resume)")
    for col in ("objective", "C (FLOPs)", "size", "N", "D (tokens)", "D/N", "steps"):
        t.add_column(col)
    for r in runs:
        t.add_row(r.objective, f"{r.flops:.3g}", r.size, count(r.n_params), f"{r.tokens:.3g}",
                  f"{r.tokens / r.n_params:.1f}", str(r.steps))  # fmt: skip
    console.print(t)
    for s in skipped:
        console.print(f"left out: {s}", highlight=False)
    for w in warnings:
        console.print(f"[yellow]warning:[/yellow] {w}", highlight=False)


@command(
    scaling_app,
    "fit",
    runs=argument(list[Path], ..., "Run folders, or folders holding them."),
    out=Opt(("--out",), Path | None, None,
            "Write the fit as JSON here. Default: none (not written)."),
    plot=Opt(("--plot",), Path | None, None,
             "Write a PNG plot here (pip install 'mdmctl[plot]'). Default: none (no plot)."),
    frontier=Opt(("--frontier",), choice(FRONTIER_FORMS, "frontier"), "saturating",
                 "L*(C) per objective: saturating, E + K·C^-b (a loss with an irreducible part), "
                 "or power, l0·C^b (the paper's fit: biased where the loss flattens)."),
    bootstrap=Opt(("--bootstrap",), int, 200,
                  "Bootstrap draws (each run's fitted loss with a resampled residual; 0: none).",
                  min=0),
    max_extrapolation=Opt(("--max-extrapolation",), float, MAX_EXTRAPOLATION,
                          "Read a frontier at most this factor in C past its measured budgets.",
                          min=1),
    extrapolate=Opt(("--extrapolate",), bool, False,
                    "Report a gap or size ratio however far past the budgets it is read "
                    "(still marked)."),
    law=Opt(("--law/--no-law",), bool, True,
            "Also fit L(N, D) = E + A/N^α + B/D^β to each objective's runs (Chinchilla's third "
            "approach) and report its gap and size ratio beside the IsoFLOP ones."),
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
        res = fit_runs(found, n_boot=o.bootstrap, seed=o.seed, form=o.frontier,
                       max_extrapolation=o.max_extrapolation, extrapolate=o.extrapolate,
                       law=o.law)  # fmt: skip
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
    from mdmctl.scaling import count

    console = results_console()
    t = Table(title=f"IsoFLOP fit of {n_runs} runs (MDM loss: ELBO bound; ARM: exact; FLOPs: "
                    f"{res['flops_convention']} count)")  # fmt: skip
    for col in ("objective", "C (FLOPs)", "runs", "N*", "L*"):
        t.add_column(col)
    for obj, fr in res["frontiers"].items():
        for b in fr["budgets"]:
            t.add_row(obj, f"{b['flops']:.3g}", str(b["n_runs"]), count(b["n_opt"]),
                      f"{b['loss_opt']:.4f}")  # fmt: skip
    console.print(t)
    for obj, fr in res["frontiers"].items():
        e = f"{fr['irreducible']:.4f} + " if fr["form"] == "saturating" else ""
        k = math.exp(fr["loss_log_coef"])
        console.print(f"{obj}: N* ∝ C^{fr['n_exp']:.3f}, L* = {e}{k:.4g}·C^{fr['loss_exp']:.4f}",
                      soft_wrap=True, highlight=False)  # fmt: skip
    for obj, law in (res.get("laws") or {}).items():
        console.print(f"{obj} law: L = {law['E']:.4f} + {law['A']:.4g}/N^{law['alpha']:.3f} + "
                      f"{law['B']:.4g}/D^{law['beta']:.3f} ({law['n_runs']} runs)",
                      soft_wrap=True, highlight=False)  # fmt: skip
    _render_comparison(console, res)
    for s in res["skipped"]:
        console.print(f"skipped: {s}", highlight=False)


def _render_comparison(console, res: dict) -> None:
    boot = {a["flops"]: a for a in (res.get("bootstrap") or {}).get("at", [])}
    laws = {c["flops"]: c for c in res.get("law_comparison", [])}
    for c in res.get("comparison", []):
        b, parts = boot.get(c["flops"], {}), []
        for key, name, x in (("compute_gap", "MDM needs", "gap_extrapolation"),
                             ("size_ratio", "N*_MDM / N*_ARM", "ratio_extrapolation")):  # fmt: skip
            if c[key] is None:
                continue
            iv = b.get(key)
            text = f"{name} {c[key]:.3g}" + ("x" if key == "compute_gap" else "")
            text += f" (95%: {iv[0]:.3g}-{iv[2]:.3g})" if iv else ""
            text += f" [extrapolated {c[x]:.3g}x]" if (c[x] or 1) > 1 else ""
            parts.append(text)
        law = laws.get(c["flops"])
        if law and law["compute_gap"] is not None:
            parts.append(f"law: {law['compute_gap']:.3g}x, ratio {law['size_ratio']:.3g}")
        note = f"; {c['note']}" if c["note"] else ""
        console.print(f"C={c['flops']:.3g}: " + "; ".join(parts) + note, highlight=False,
                      soft_wrap=True)  # fmt: skip
