"""``mdmctl eval reverse-curse``: a thin layer over
``mdmctl.evaluation.reverse_curse.evaluate_reverse_curse``."""

from __future__ import annotations

from pathlib import Path

from mdmctl.cli import options as opt
from mdmctl.cli.common import canonical_name, cli_errors, eval_app, log_info, print_json


@opt.command(
    eval_app,
    "reverse-curse",
    checkpoint=opt.CHECKPOINT,
    data_dir=opt.Opt(("--data-dir",), Path, ..., "Folder with the reversal-curse test files (e.g. "
                     "../shared/data/reversal_curse)."),
    out=opt.out("Per-example jsonl. Default: none (not written)."),
    limit=opt.limit("prompts of each file"),
    total_length=opt.Opt(("--total-length",), int, 52, "Prompt + generation tokens (SMDM: 52).",
                         min=2),
    rank=opt.Opt(("--rank",), bool, False,
                 "Also rank each reference by likelihood against the other names (description "
                 "-> name files) or one description of every other person (name -> description "
                 "files); MDM: conditional ELBO, ARM: exact."),
    rank_mc=opt.Opt(("--rank-mc",), int, 16, "MDM: stratified t samples per candidate for --rank.",
                    min=1),
    splits=opt.Opt(("--splits",), str, "p2d_same,p2d_reverse,d2p_same,d2p_reverse",
                   "Comma-separated test files to run (ranking descriptions is the slow part)."),
    steps=opt.STEPS.but(type=int, default=32, help="Denoising steps (SMDM: 32)."),
    sampler=opt.SAMPLER,
    temperature=opt.TEMPERATURE.but(help="Sampling temperature; 0 = argmax (SMDM: 0)."),
    cfg=opt.CFG.but(default=0.8, help="Unsupervised CFG (SMDM: 0.8; ARM checkpoints: 0)."),
    **opt.DECODING,
    batch_size=opt.GEN_BATCH.but(default=64, note="With --rank: 4x as many rows per forward."),
    seed=opt.SEED.but(help="Seed of the sampling noise and of --rank (SMDM: 1234)."),
    **opt.RUNTIME,
    **opt.json_out("Print one JSON object per split on stdout."),
)  # fmt: skip
def eval_reverse_curse(o: opt.Options) -> None:
    """Reverse-curse accuracy and BLEU in the trained and the reverse direction."""
    from mdmctl.progress import library_progress

    with cli_errors(), library_progress():
        from mdmctl.evaluation.reverse_curse import SPLITS, evaluate_reverse_curse

        scfg = opt.sample_config(o)
        res = evaluate_reverse_curse(
            data_dir=str(o.data_dir), checkpoint=scfg.checkpoint, sample_cfg=scfg,
            out=str(o.out) if o.out else None, log=log_info,
            splits=tuple(split_name(x.strip(), SPLITS) for x in o.splits.split(",") if x.strip()),
            **o.pick("total_length", "limit", "rank", "rank_mc"),
        )  # fmt: skip
        if o.out:
            log_info(f"wrote {o.out}")
        if o.json_out:
            print_json([r.__dict__ for r in res])
            return
        render(res, o.rank)


def render(res: list, rank: bool) -> None:
    from rich.table import Table

    from mdmctl.log import results_console

    t = Table(title="reverse curse")
    cols = ["split", "direction", "n", "accuracy", "BLEU (SMDM, chars)", "BLEU-4 (words)"] + (
        ["rank acc. (chance)"] if rank else []
    )
    for col in cols:
        t.add_column(col)
    for r in res:
        row = [r.split, r.direction, str(r.n), f"{r.accuracy:.3f} ± {r.stderr:.3f}",
               f"{r.bleu_smdm:.1f}", f"{r.bleu:.1f}"]  # fmt: skip
        if rank:
            row.append(f"{r.rank_accuracy:.3f} ± {r.rank_stderr:.3f} ({1 / r.candidates:.3f})")
        t.add_row(*row)
    results_console().print(t)


def split_name(name: str, known: dict) -> str:
    """``p2d-same`` -> ``p2d_same``: '-' and '_' are interchangeable; unknown names pass through
    (the library reports them)."""
    return next((k for k in known if canonical_name(k) == canonical_name(name)), name)
