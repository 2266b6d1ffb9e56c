"""IsoFLOP planning and fitting on synthetic runs whose law is known."""

from __future__ import annotations

import json
import math
import random
import subprocess

import pytest

from mdmctl.config import ModelConfig
from mdmctl.scaling import compare, fit, fit_frontier, plan, read_runs, shape_of, sweep_script

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
        for c in (1e12, 4e12, 1.6e13, 6.4e13):
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
    assert len(runs) == 56
    arm, mdm = fit_frontier(runs, "arm"), fit_frontier(runs, "mdm")
    assert arm.n_exp == pytest.approx(0.5, abs=1e-6)
    assert arm.loss_exp == pytest.approx(-0.05, abs=1e-6)
    assert arm.n_opt(1e14) == pytest.approx(0.1 * 1e7, rel=1e-5)
    cmp = compare(mdm, arm, 1e13)
    assert cmp.compute_gap == pytest.approx(GAP, rel=1e-5)
    assert cmp.size_ratio == pytest.approx(RATIO, rel=1e-5)


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
    assert len(read_runs([tmp_path])) == 55


def test_plan_follows_c_equals_6nd(tmp_path):
    runs, skipped = plan(
        [1e11, 1e12], ["mdm", "arm"], ["tiny", "4x128", "mini"],
        batch_size=16, seq_len=64, out_root="sweep", min_steps=20,
    )  # fmt: skip
    assert runs and skipped  # mini at 1e11 has fewer than 20 steps
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
    runs, skipped = plan(
        [1e11, 1e12], ["mdm"], ["tiny", "4x128"],
        batch_size=16, seq_len=64, out_root="sweep", min_steps=20, max_steps=1000,
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
    assert "needs 16.00x the compute" in r.stdout and "N*_MDM / N*_ARM = 0.50" in r.stdout
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
