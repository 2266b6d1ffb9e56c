"""IsoFLOP planning and fitting on synthetic runs whose law is known."""

from __future__ import annotations

import json
import math
import random
import subprocess

import pytest

from mdmctl.config import ModelConfig
from mdmctl.scaling import (
    SweepShape,
    compare,
    fit,
    fit_frontier,
    plan,
    read_runs,
    shape_of,
    sweep_script,
)

GAP, RATIO = 16.0, 0.5  # the MDM needs 16x the compute; its optimal size is half the ARM's


def law(objective: str, n: float, c: float) -> float:
    """ARM: N*(C) = 0.1 C^0.5, L*(C) = 20 C^-0.05; the MDM is the ARM at C / 16 with half the
    optimal size; each IsoFLOP curve a parabola in ln N."""
    n_opt = 0.1 * c**0.5 * (RATIO if objective == "mdm" else 1.0)
    l_opt = 20.0 * (c / GAP if objective == "mdm" else c) ** -0.05
    return l_opt + 0.05 * (math.log(n) - math.log(n_opt)) ** 2


def write_runs(root, noise: float = 0.0, seed: int = 0) -> None:
    rng = random.Random(seed)
    for objective in ("mdm", "arm"):
        # The MDM's budgets reach 16x the ARM's, so every gap is read where it was measured.
        for c in (1e12, 4e12, 1.6e13, 6.4e13) + ((2.56e14, 1.024e15) if objective == "mdm" else ()):
            n_opt = 0.1 * c**0.5 * (RATIO if objective == "mdm" else 1.0)
            for k in range(-3, 4):
                # A real shape near N* 2^k: 4 layers of width d (d_ff = 4d), N = 4(16d² + 2d) + d.
                d = max(8, 8 * round(math.sqrt(n_opt * 2**k / 64) / 8))
                m = ModelConfig(n_layers=4, d_model=d, n_heads=1, d_ff=4 * d, objective=objective)
                run = root / f"{objective}-{c:.0e}-{k}"
                run.mkdir(parents=True)
                cfg = {"model": m.to_dict(), "train": {"flops": c, "batch_size": 8}}
                (run / "config.json").write_text(json.dumps(cfg))
                loss = law(objective, m.n_params_non_embedding, c) + rng.gauss(0, noise)
                recs = [{"step": 10, "loss": 9.0}, {"step": 20, "loss": 8.0, "val_loss": loss}]
                (run / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in recs) + "\n")


def test_fit_recovers_a_known_law(tmp_path):
    write_runs(tmp_path)
    runs = read_runs([tmp_path])
    assert len(runs) == 70
    arm, mdm = fit_frontier(runs, "arm"), fit_frontier(runs, "mdm")
    assert arm.n_exp == pytest.approx(0.5, abs=1e-6)
    assert arm.loss_exp == pytest.approx(-0.05, abs=1e-6)
    assert arm.n_opt(1e14) == pytest.approx(0.1 * 1e7, rel=1e-5)
    cmp = compare(mdm, arm, 1e13)  # the MDM's 1.6e14: measured
    assert cmp.compute_gap == pytest.approx(GAP, rel=1e-5) and cmp.gap_extrapolation == 1.0
    assert cmp.size_ratio == pytest.approx(RATIO, rel=1e-5)
    far = compare(mdm, arm, 1.6e14)  # the MDM's 2.56e15 lies 2.5x past its largest budget
    assert far.compute_gap is None and far.gap_extrapolation == pytest.approx(2.5)
    assert "2.5x past its budgets" in far.note and "--extrapolate" in far.note
    assert compare(mdm, arm, 1.6e14, extrapolate=True).compute_gap == pytest.approx(GAP, rel=1e-5)
    power = fit_frontier(runs, "mdm", "power")  # this law's L* is a pure power law: both agree
    assert power.loss_exp == pytest.approx(-0.05, abs=1e-6)


def test_bootstrap_interval_covers_the_truth_under_noise(tmp_path):
    write_runs(tmp_path, noise=0.003, seed=1)
    res = fit(read_runs([tmp_path]), n_boot=100, seed=0)
    assert res["bootstrap"]["failed"] < 10
    at = res["bootstrap"]["at"]
    # 95% intervals at 4 budgets: each may miss now and then, most must cover the truth.
    for key, truth in (("compute_gap", GAP), ("size_ratio", RATIO)):
        covered = [a[key][0] < truth < a[key][2] for a in at]
        assert sum(covered) >= 3, (key, [a[key] for a in at])
        assert all(a[key][2] / a[key][0] < 1.2 for a in at)  # and says something
    assert json.loads(json.dumps(res))  # strict JSON: no NaN or inf


def test_runs_without_validation_or_fine_tunes_are_skipped(tmp_path):
    write_runs(tmp_path)
    (tmp_path / "arm-1e+12-0" / "metrics.jsonl").write_text('{"step": 5, "loss": 3.0}\n')
    sft = tmp_path / "sft"
    sft.mkdir()
    (sft / "config.json").write_text(
        (tmp_path / "arm-1e+12-1" / "config.json").read_text()[:-1] + ', "sft": {}}'
    )
    (sft / "metrics.jsonl").write_text('{"step": 5, "val_loss": 1.0}\n')
    assert len(read_runs([tmp_path])) == 69


def test_kept_runs_fit_like_the_originals(tmp_path):
    """examples/scaling/keep_runs.py: config + last metrics line per finished run; read back the
    same as the originals, unfinished runs left out."""
    import runpy
    from pathlib import Path

    script = Path(__file__).parents[1] / "examples/scaling/keep_runs.py"
    keep = runpy.run_path(str(script))["keep"]
    write_runs(tmp_path / "runs")
    (tmp_path / "runs" / "arm-1e+12-0" / "metrics.jsonl").write_text('{"step": 5, "loss": 3.0}\n')
    assert len(keep(tmp_path / "runs", tmp_path / "kept")) == 69
    assert not (tmp_path / "kept" / "arm-1e+12-0").exists()
    key = lambda r: (r.objective, r.n_params, r.flops, r.val_loss, r.tokens, r.convention)  # noqa: E731
    kept = sorted(map(key, read_runs([tmp_path / "kept"])))
    assert kept == sorted(map(key, read_runs([tmp_path / "runs"])))
    assert all(len((d / "metrics.jsonl").read_text().splitlines()) == 1
               for d in (tmp_path / "kept").iterdir())  # fmt: skip


def test_plan_follows_c_equals_6nd(tmp_path):
    runs, skipped, warnings = plan(
        [1e11, 1e12], ["mdm", "arm"], ["tiny", "4x128", "mini"],
        SweepShape(batch_size=16, seq_len=64, min_steps=20), "sweep",
    )  # fmt: skip
    assert runs and skipped  # 4x128 and mini at 1e11 have fewer than 20 steps
    assert warnings == [f"{o} C=1e+11: 1 size; an IsoFLOP parabola needs 3 (add sizes, or "
                        "change the budget)" for o in ("mdm", "arm")]  # fmt: skip
    for r in runs:
        n = shape_of(r.size, 64).n_params_non_embedding
        assert r.n_params == n and r.tokens == pytest.approx(r.flops / (6 * n))
        assert r.steps == int(r.flops // (6 * n * 16 * 64)) >= 20
    script = tmp_path / "sweep.sh"
    script.write_text(sweep_script(runs, "data/corpus", ["--batch-size", "16"]))
    subprocess.run(["bash", "-n", str(script)], check=True)  # valid bash
    text = script.read_text()
    assert text.count("mdmctl pretrain") == len(runs) and "--resume auto" in text
    assert "--n-layers 4 --d-model 128 --n-heads 2 --d-ff 512" in text


def test_plan_leaves_out_sizes_beyond_max_steps():
    runs, skipped, _ = plan(
        [1e11, 1e12], ["mdm"], ["tiny", "4x128"],
        SweepShape(batch_size=16, seq_len=64, min_steps=20, max_steps=1000), "sweep",
    )  # fmt: skip
    assert runs and all(20 <= r.steps <= 1000 for r in runs)
    assert any("(too small)" in s for s in skipped)  # tiny at 1e12 needs more than 1000 steps


def test_shape_errors():
    from mdmctl.errors import ConfigError

    with pytest.raises(ConfigError, match="LxD"):
        shape_of("big", 64)
    with pytest.raises(ConfigError, match="multiple of 8"):
        shape_of("2x30", 64)


def test_plot_writes_a_png(tmp_path):
    pytest.importorskip("matplotlib", reason="matplotlib is in the test extra (mdmctl[plot])")
    from mdmctl.scaling import plot

    write_runs(tmp_path / "runs")
    res = fit(read_runs([tmp_path / "runs"]), n_boot=0)
    plot(res, tmp_path / "fit.png")
    assert (tmp_path / "fit.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_plan_and_fit(tmp_path):
    from .conftest import run

    script = tmp_path / "sweep.sh"
    r = run("scaling", "plan", "--flops", "1e11,1e12", "--sizes", "tiny,2x96,mini",
            "--batch-size", "16", "--seq-len", "64", "--min-steps", "20", "--out", script,
            "--runs-dir", tmp_path / "runs", "--json")  # fmt: skip
    planned = json.loads(r.stdout)
    assert len(planned["runs"]) == script.read_text().count("mdmctl pretrain") == 10
    assert planned["skipped"] == ["mdm C=1e+11 mini: 15 steps < 20 (too big)",
                                  "arm C=1e+11 mini: 15 steps < 20 (too big)"]  # fmt: skip
    write_runs(tmp_path / "synthetic")
    out, png = tmp_path / "fit.json", tmp_path / "fit.png"
    r = run("scaling", "fit", tmp_path / "synthetic", "--out", out, "--bootstrap", "20")
    assert "MDM needs 16x (95%: " in r.stdout and "N*_MDM / N*_ARM 0.5 (95%: " in r.stdout
    assert json.loads(out.read_text())["comparison"][0]["compute_gap"] == pytest.approx(16)
    if pytest.importorskip("matplotlib"):
        run("scaling", "fit", tmp_path / "synthetic", "--plot", png, "--bootstrap", "0")
        assert png.is_file()
    r = run("scaling", "fit", tmp_path / "runs", code=3)  # planned, nothing run yet
    assert "no such run folder" in r.stderr
    (tmp_path / "runs").mkdir()
    r = run("scaling", "fit", tmp_path / "runs", code=2)
    assert "no finished pretraining runs" in r.stderr
    r = run("scaling", "plan", "--flops", "1e5", "--sizes", "tiny", code=2)
    assert "--min-steps" in r.stderr
    r = run("scaling", "plan", "--flops", "inf", code=2)
    assert "finite" in r.stderr


def test_a_minimum_outside_the_sizes_tried_is_not_extrapolated():
    from mdmctl.scaling import Run, fit_budget

    # Losses falling with N across every size tried: the vertex lies above the largest one.
    runs = [Run(f"r{n}", "arm", n, 1e12, law("arm", n, 1e12)) for n in (1e3, 2e3, 4e3, 8e3)]
    with pytest.raises(ValueError, match="outside the sizes tried"):
        fit_budget(runs)


def test_flops_conventions_are_recorded_and_read_back(tmp_path):
    """At micro scale the head dominates: the full count of a 1x16 model with 1,024 tokens is
    several times 6·N. plan, pretrain --flops and fit read the run's convention; fit refuses a
    sweep that mixes two."""
    from mdmctl.config import TrainConfig, pretrain_config
    from mdmctl.errors import ConfigError, DataError
    from mdmctl.scaling import Run

    m = shape_of("1x16", 64, vocab_size=1024)
    assert m.name == "1x16"
    paper, full = m.train_flops_per_token("paper"), m.train_flops_per_token("full")
    assert paper == 6 * m.n_params_non_embedding and full / paper > 4
    steps = {c: TrainConfig(flops=1e11, batch_size=32, flops_convention=c).resolve_steps(m)
             for c in ("paper", "full")}  # fmt: skip
    assert steps["paper"] == int(1e11 // (paper * 32 * 64)) and steps["full"] < steps["paper"]
    with pytest.raises(ConfigError, match="--vocab-size"):
        plan([1e11], ["arm"], ["1x16"], SweepShape(32, 64, convention="full"), "sweep")
    runs, _, _ = plan([1e11], ["arm"], ["1x16"], SweepShape(32, 64, 1024, "full"), "sweep")
    assert runs[0].steps == steps["full"] and runs[0].tokens == pytest.approx(1e11 / full)
    mixed = [Run("a", "arm", 4000, 1e11, 3.0, 1e6, "paper"), Run("b", "arm", 4000, 1e11, 3.0,
             1e6, "full")]  # fmt: skip
    with pytest.raises(DataError, match="different conventions"):
        fit(mixed, n_boot=0)
    cfg = pretrain_config(model={"n_layers": 2, "d_model": 32})  # a shape given by dimensions
    assert cfg.model.name == "2x32" and cfg.out.endswith("mdm-2x32-builtin")
    assert cfg.train.resolve_lr(cfg.model) == 3e-3  # the CPU default, as before it was named


def test_plan_centres_sizes_on_the_expected_optimum():
    ladder = ["1x16", "2x16", "2x24", "2x32", "2x48", "2x64", "3x64", "4x64"]
    n = {s: shape_of(s, 64).n_params_non_embedding for s in ladder}
    shape = SweepShape(32, 64, min_steps=1, centre=(n["2x32"] / 1e12, 1.0), per_budget=3)
    runs, skipped, _ = plan([1e12], ["arm"], ladder, shape, "sweep")
    assert [r.size for r in runs] == ["2x24", "2x32", "2x48"]  # the 3 nearest N* = N(2x32)
    assert any("not among the 3 sizes nearest N* = " in s for s in skipped)
    runs, skipped, _ = plan([1e12], ["arm"], ladder, SweepShape(32, 64, min_steps=1,
                            dn_window=(100, 1e9)), "sweep")  # fmt: skip
    assert all(r.tokens / r.n_params >= 100 for r in runs) and any("D/N" in s for s in skipped)
