"""Memory planning check: measured peak RSS of training steps vs ``mdmctl.memory``'s estimate.

Each configuration runs in a fresh process (so ``ru_maxrss`` is its own): build the model, run
``--steps`` optimizer steps of the MDM (or ARM) loss on random tokens at the micro-batch and
context given, exactly the tensors a training step holds (fp32 weights, gradients, AdamW moments,
activations, logits). The script prints measured and estimated peak memory and their ratio; an
estimate/measured ratio at or above 1 means the planner is on the safe side.

    python benchmarks/memory_estimate.py                  # the default ladder (a few minutes)
    python benchmarks/memory_estimate.py --configs tiny:64:64 mini:256:16

A configuration is SIZE:SEQ_LEN:MICRO_BATCH[:arm][:ac][:full] (ac: activation checkpointing; full:
``--loss-head full``, logits at every position; otherwise the default, ``chunked``).
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys

DEFAULT = [
    "tiny:64:64",
    "mini:256:16",
    "mini:256:64",
    "small:256:32",
    "small:256:32:arm",
    "6M:512:16",
    "6M:512:16:ac",
    "19M:1024:4",
    "small:256:32:full",
    "6M:512:16:full",
]
VOCAB = 4096


def child(spec: str, steps: int) -> dict:
    """Run in the subprocess: train ``steps`` steps, report peak RSS and the estimate."""
    import resource

    import torch

    from mdmctl.autoregressive import arm_train_loss
    from mdmctl.config import ModelConfig
    from mdmctl.diffusion import mdm_loss
    from mdmctl.memory import estimate_training
    from mdmctl.model import Transformer

    size, seq, micro, *flags = spec.split(":")
    objective = "arm" if "arm" in flags else "mdm"
    head = "full" if "full" in flags else "chunked"
    cfg = ModelConfig.from_name(
        size, objective=objective, seq_len=int(seq), vocab_size=VOCAB, mask_id=VOCAB - 1
    )
    torch.manual_seed(0)
    model = Transformer(cfg)
    model.activation_checkpointing = "ac" in flags
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    gen = torch.Generator().manual_seed(0)
    for _ in range(steps):
        x0 = torch.randint(0, VOCAB - 1, (int(micro), int(seq)), generator=gen)
        if objective == "mdm":
            loss = mdm_loss(model, x0, cfg.mask_id, gen, head=head)
        else:
            loss = arm_train_loss(model, x0, head=head)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
    est = estimate_training(cfg, int(micro), activation_checkpointing="ac" in flags, loss_head=head)
    return {"spec": spec, "measured": peak, "estimate": est.total, "activations": est.activations}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--configs", nargs="+", default=DEFAULT)
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.steps)))
        return
    print(f"# {platform.processor() or platform.machine()}, vocab {VOCAB}, {args.steps} steps")
    print(f"{'config':<22}{'measured':>12}{'estimate':>12}{'est/meas':>10}")
    for spec in args.configs:
        out = subprocess.run(
            [sys.executable, __file__, "--child", spec, "--steps", str(args.steps)],
            capture_output=True,
            text=True,
        )
        if out.returncode != 0:
            print(f"{spec:<22} failed: {out.stderr.strip().splitlines()[-1]}")
            continue
        r = json.loads(out.stdout)
        gb = 2**30
        print(
            f"{spec:<22}{r['measured'] / gb:>10.2f}G{r['estimate'] / gb:>10.2f}G"
            f"{r['estimate'] / r['measured']:>10.2f}"
        )


if __name__ == "__main__":
    main()
