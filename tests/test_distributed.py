"""Multi-process training (docs/distributed.md; reliability.md §9-11, R26, R30-R32).

Fast tests: the micro-batch split, option rules, activation checkpointing, and the DDP / FSDP2
code paths in a one-process group. ``slow`` tests launch real 2-process gloo runs on CPU with
``python -m torch.distributed.run`` (OMP_NUM_THREADS=1, the tiny model, a few steps) and compare
them with one process on the same global batch and micro-batch size. Tolerance: max abs diff
< 1e-5 on every weight (DDP is usually bit-identical here; FSDP2 sums gradients in another order).
"""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from mdmctl import checkpoint as ckpt
from mdmctl.config import ModelConfig, RunConfig, TrainConfig
from mdmctl.distributed import micro_batch_for_world, rank_micro_batches, resolve_parallel
from mdmctl.errors import ConfigError
from mdmctl.train import pretrain

TOL = 1e-5
PROBE = Path(__file__).with_name("rank_exit_probe.py")
# 6 steps, global batch 8 in micro-batches of 2: one process accumulates 4, each of 2 ranks 2
# (so the no-sync path of gradient accumulation runs on every rank).
ARGS = dict(steps=6, batch_size=8, micro_batch_size=2, val_every=3, save_every=3, seed=3)


@pytest.fixture(autouse=True)
def _one_thread():
    """In-process runs use one thread, like each torchrun worker here (OMP_NUM_THREADS=1): on a
    busy 2-core runner a multi-threaded process can be slowed down several-fold by contention."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _cli_args(corpus_dir: Path, out: Path, **over) -> list[str]:
    kw = {**ARGS, **over}
    args = ["pretrain", "--size", "tiny", "--seq-len", "32", "--data", str(corpus_dir)]
    args += ["--out", str(out), "--device", "cpu", "--show-samples", "0"]
    for k, v in kw.items():
        if v is True:
            args.append(f"--{k.replace('_', '-')}")
        else:
            args += [f"--{k.replace('_', '-')}", str(v)]
    return args


def _run_cfg(corpus_dir: Path, out: Path, **over) -> RunConfig:
    return RunConfig(
        model=ModelConfig.from_name("tiny", seq_len=32),
        train=TrainConfig(**{**ARGS, "val_batches": 4, "val_mc": 8, **over}),
        data=str(corpus_dir),
        out=str(out),
        device="cpu",
    )


def _env(**extra: str) -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    env.update(extra)
    return env


def _torchrun(
    args: list[str], entry: tuple[str, ...] = ("-m", "mdmctl"), launcher: tuple[str, ...] = ()
) -> list[str]:
    """``python -m torch.distributed.run`` (torchrun) with 2 local processes."""
    run = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    return [*run, *launcher, *entry, *args]


def _launch(args: list[str]) -> subprocess.CompletedProcess:
    p = subprocess.run(_torchrun(args), env=_env(), capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-4000:]
    return p


def _max_diff(a: Path, b: Path) -> float:
    x, y = load_file(str(a)), load_file(str(b))
    assert x.keys() == y.keys()
    return max(float((x[k].double() - y[k].double()).abs().max()) for k in x)


def _losses(run_dir: Path) -> dict[int, float]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return {r["step"]: r["loss"] for r in map(json.loads, lines)}


# ------------------------------------------------------------------------------ fast


@pytest.mark.parametrize("world", [1, 2, 3, 4])
def test_micro_batches_partition_the_global_batch(world):
    """Each rank a contiguous block; blocks disjoint, in rank order, covering every micro-batch."""
    accum = 12
    blocks = [rank_micro_batches(accum, world, r) for r in range(world)]
    assert [m for b in blocks for m in b] == list(range(accum))
    assert all(len(b) == accum // world for b in blocks)


def test_split_rules():
    with pytest.raises(ConfigError, match="cannot be split over 3 processes"):
        rank_micro_batches(4, 3, 0)
    assert micro_batch_for_world(8, None, 1) is None  # one process: unchanged
    assert micro_batch_for_world(8, None, 2) == 4  # one micro-batch per rank
    assert micro_batch_for_world(8, 2, 2) == 2
    with pytest.raises(ConfigError, match="multiple of micro_batch_size x world size"):
        micro_batch_for_world(8, 8, 2)
    with pytest.raises(ConfigError, match="not divisible by the world size 3"):
        micro_batch_for_world(8, None, 3)
    assert resolve_parallel("auto", 1) == "none" and resolve_parallel("auto", 2) == "ddp"
    with pytest.raises(ConfigError, match="--parallel none: 2 processes"):
        resolve_parallel("none", 2)
    with pytest.raises(ConfigError, match="train.parallel"):
        TrainConfig(parallel="fsdp2")


def test_activation_checkpointing_gives_identical_weights(tmp_path, corpus_dir):
    plain = pretrain(_run_cfg(corpus_dir, tmp_path / "a", steps=3), log=lambda m: None)
    ac = pretrain(
        _run_cfg(corpus_dir, tmp_path / "b", steps=3, activation_checkpointing=True),
        log=lambda m: None,
    )
    a, b = (r.checkpoint / "model.safetensors" for r in (plain, ac))
    assert a.read_bytes() == b.read_bytes()


@pytest.mark.parametrize("parallel", ["ddp", "fsdp"])
def test_wrapped_paths_in_a_one_process_group(tmp_path, corpus_dir, parallel):
    """``--parallel ddp|fsdp`` without torchrun: a private one-rank group, same results as none,
    a checkpoint in the same format, and the group is gone afterwards."""
    import torch.distributed as dist

    ref = pretrain(_run_cfg(corpus_dir, tmp_path / "none", steps=3), log=lambda m: None)
    r = pretrain(
        _run_cfg(corpus_dir, tmp_path / parallel, steps=3, parallel=parallel), log=lambda m: None
    )
    assert not dist.is_initialized()
    assert r.parallel == parallel and r.world_size == 1
    name = "model.safetensors"
    assert _max_diff(ref.checkpoint / name, r.checkpoint / name) < TOL
    assert json.loads((r.checkpoint / "MANIFEST.json").read_text())["parallel"] == parallel


@pytest.mark.parametrize("parallel", ["ddp", "fsdp"])
def test_gradients_are_reduced_once_per_step(tmp_path, corpus_dir, monkeypatch, parallel):
    """Accumulating 4 micro-batches: DDP's reduction hook fires once per step (no_sync on the
    first 3); FSDP2 has gradient sync off for the first 3 micro-batches and on for the last."""
    import mdmctl.distributed as md

    seen: list = []
    real_wrap = md.wrap

    def wrap(model, d, device):
        wrapped = real_wrap(model, d, device)
        if parallel == "ddp":

            def hook(state, bucket):
                seen.append("reduce")
                fut = torch.futures.Future()
                fut.set_result(bucket.buffer())
                return fut

            wrapped.register_comm_hook(None, hook)
        else:
            real_set = wrapped.set_requires_gradient_sync
            monkeypatch.setattr(
                wrapped,
                "set_requires_gradient_sync",
                lambda on, **kw: (seen.append(on), real_set(on, **kw))[1],
            )
        return wrapped

    monkeypatch.setattr(md, "wrap", wrap)
    pretrain(_run_cfg(corpus_dir, tmp_path / "r", steps=3, parallel=parallel), log=lambda m: None)
    if parallel == "ddp":
        assert seen == ["reduce"] * 3  # one bucket for the tiny model, once per step
    else:
        assert seen == [False, False, False, True] * 3


# ------------------------------------------------------------------------------ slow


@pytest.fixture(scope="module")
def reference(tmp_path_factory, corpus_dir) -> Path:
    """One process, same global batch and micro-batch size: what every world size must match."""
    out = tmp_path_factory.mktemp("ref") / "run"
    pretrain(_run_cfg(corpus_dir, out), log=lambda m: None)
    return out


@pytest.mark.slow
@pytest.mark.parametrize(
    "parallel,ac", [("ddp", False), ("fsdp", False), ("ddp", True), ("fsdp", True)]
)
def test_two_ranks_match_one_process(tmp_path, corpus_dir, reference, parallel, ac):
    out = tmp_path / "run"
    extra = {"parallel": parallel, **({"activation_checkpointing": True} if ac else {})}
    p = _launch(_cli_args(corpus_dir, out, **extra))
    step = "checkpoints/step-00000006"
    for name in ("model.safetensors", "optimizer.safetensors"):
        assert _max_diff(reference / step / name, out / step / name) < TOL, name
    ref_loss, loss = _losses(reference), _losses(out)
    assert ref_loss.keys() == loss.keys()
    assert all(abs(ref_loss[s] - loss[s]) < 1e-4 for s in loss)
    manifest = json.loads((out / step / "MANIFEST.json").read_text())
    assert manifest["world_size"] == 2 and manifest["parallel"] == parallel
    # Rank 0 alone writes: one metrics record per step, no stray files, the lock released.
    files = ["checkpoints", "config.json", "metrics.jsonl"]
    if importlib.util.find_spec("matplotlib"):
        files.append("loss.png")  # the loss curve, written by rank 0 at the end
    assert sorted(p.name for p in out.iterdir()) == sorted(files)
    assert [s.name for s in ckpt.list_steps(out)] == ["step-00000006", "step-00000003"]
    assert p.stderr.count("non-embedding params") == 1  # the run header, logged once
    if parallel == "fsdp" and not ac:
        # The gathered FSDP2 checkpoint resumes in one process (another world size, no FSDP).
        r = pretrain(
            _run_cfg(corpus_dir, tmp_path / "one"),
            resume=str(out / "checkpoints/step-00000003"),
            log=lambda m: None,
        )
        assert r.resumed_from == 3
        assert _max_diff(out / step / "model.safetensors", r.checkpoint / "model.safetensors") < TOL


@pytest.mark.slow
def test_resume_a_two_rank_run_with_one_and_with_two(tmp_path, corpus_dir, reference):
    """Save with 2 ranks, resume step 3 with 1 process and with 2: both equal the uninterrupted
    2-rank run (same data from step 4 on: the loader state is world-size independent)."""
    a = tmp_path / "a"
    _launch(_cli_args(corpus_dir, a))
    step3, step6 = a / "checkpoints/step-00000003", "checkpoints/step-00000006/model.safetensors"
    one = pretrain(_run_cfg(corpus_dir, tmp_path / "one"), resume=str(step3), log=lambda m: None)
    assert one.resumed_from == 3 and one.steps == 6
    assert _max_diff(a / step6, tmp_path / "one" / step6) < TOL
    _launch(_cli_args(corpus_dir, tmp_path / "two", resume=step3))
    x, y = load_file(str(a / step6)), load_file(str(tmp_path / "two" / step6))
    assert all(torch.equal(x[k], y[k]) for k in x)  # same world size: bit-exact
    for run in ("one", "two"):
        resumed = _losses(tmp_path / run)
        assert sorted(resumed) == [6]  # log_every 10: only the last step after the resume
        assert abs(resumed[6] - _losses(a)[6]) < 1e-4
    assert _max_diff(reference / step6, tmp_path / "two" / step6) < TOL


@pytest.mark.slow
def test_sigterm_under_torchrun_stops_every_rank_at_one_step(tmp_path, corpus_dir):
    """SIGTERM to the launcher: torchrun forwards it, the ranks agree on the step, rank 0 saves
    once, both workers exit 143; torchrun itself exits 1. Resuming finishes like an unbroken run."""
    out, logs, codes = tmp_path / "run", tmp_path / "logs", tmp_path / "codes"
    codes.mkdir()
    long = dict(steps=200, save_every=1000, val_every=1000)
    args = _cli_args(corpus_dir, out, **long)
    cmd = _torchrun(args, (str(PROBE),), ("--log-dir", str(logs), "--redirects", "2"))
    p = subprocess.Popen(
        cmd, env=_env(MDMCTL_EXIT_DIR=str(codes)), stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    metrics, deadline = out / "metrics.jsonl", time.time() + 120
    while time.time() < deadline and not (
        metrics.exists() and metrics.read_text().count("\n") >= 1
    ):
        time.sleep(0.05)
    p.send_signal(signal.SIGTERM)
    _, err = p.communicate(timeout=120)
    assert p.returncode == 1, err.decode()[-3000:]  # torchrun's own code after a signal
    assert {f.name: f.read_text() for f in codes.iterdir()} == {"rank0": "143", "rank1": "143"}
    stops = []
    for rank in (0, 1):
        (log,) = logs.rglob(f"attempt_0/{rank}/stderr.log")
        line = next(ln for ln in log.read_text().splitlines() if "interrupted by SIGTERM" in ln)
        stops.append(line.rsplit("/", 1)[1])
    assert stops[0] == stops[1]  # both ranks stopped at the step of the one checkpoint
    assert [s.name for s in ckpt.list_steps(out)] == [stops[0]]
    assert not list((out / "checkpoints").glob(".tmp-*"))
    ckpt.verify(out / "checkpoints" / stops[0])
    stopped = int(stops[0].split("-")[1])
    assert 10 <= stopped < 200
    assert not (out / ".mdmctl.lock").exists()
    # Continue in one process (another world size) and compare with an unbroken one-process run.
    resumed = pretrain(_run_cfg(corpus_dir, out, **long), log=lambda m: None)
    assert resumed.resumed_from == stopped
    ref = pretrain(_run_cfg(corpus_dir, tmp_path / "ref", **long), log=lambda m: None)
    final = "checkpoints/step-00000200/model.safetensors"
    assert _max_diff(out / final, ref.run_dir / final) < TOL


def _nan_worker(rank: int, store: str, out: str, corpus_dir: str, results) -> None:
    """A rank of a 2-process gloo group whose loss turns NaN on rank 1 only, at step 3."""
    import torch.distributed as dist

    import mdmctl.train.pretraining as tr
    from mdmctl.errors import DivergenceError

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
    try:
        real, calls = tr.mdm_loss, {"n": 0}

        def flaky(*a, **k):
            calls["n"] += 1  # two micro-batches per rank per step: call 5 is in step 3
            loss = real(*a, **k)
            return loss * float("nan") if rank == 1 and calls["n"] == 5 else loss

        tr.mdm_loss = flaky
        try:
            pretrain(_run_cfg(Path(corpus_dir), Path(out), steps=6, save_every=2))
            results.put((rank, "finished"))
        except DivergenceError as e:
            results.put((rank, str(e)))
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_nan_on_one_rank_stops_both_at_the_same_step(tmp_path, corpus_dir):
    import torch.multiprocessing as mp

    ctx = mp.get_context("spawn")
    results = ctx.SimpleQueue()
    args = (str(tmp_path / "store"), str(tmp_path / "run"), str(corpus_dir), results)
    mp.start_processes(_nan_worker, args=args, nprocs=2, start_method="spawn", join=True)
    got = dict(results.get() for _ in range(2))
    assert all("non-finite loss" in m and "at step 3" in m for m in got.values()), got
    # No update at step 3 and no save after it: step 2 is the last checkpoint.
    assert [s.name for s in ckpt.list_steps(tmp_path / "run")] == ["step-00000002"]


@pytest.mark.slow
def test_finetune_on_two_ranks_matches_one_process(tmp_path, ckpts):
    from mdmctl.config import FinetuneConfig
    from mdmctl.train import finetune

    rows = [
        {"prompt": f"the cat sat on the mat {i}", "completion": " the dog ran."} for i in range(40)
    ]
    data = tmp_path / "sft.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    train = dict(steps=4, batch_size=8, micro_batch_size=2, val_every=4, save_every=4)
    ref = finetune(
        FinetuneConfig(
            init=str(ckpts["mdm"]),
            data=str(data),
            out=str(tmp_path / "one"),
            train=TrainConfig(**train),
            device="cpu",
        ),
        log=lambda m: None,
    )
    args = ["finetune", "--init", str(ckpts["mdm"]), "--data", str(data), "--device", "cpu"]
    args += ["--out", str(tmp_path / "two")]
    for k, v in train.items():
        args += [f"--{k.replace('_', '-')}", str(v)]
    _launch(args)
    step = "checkpoints/step-00000004/model.safetensors"
    assert _max_diff(ref.run_dir / step, tmp_path / "two" / step) < TOL
