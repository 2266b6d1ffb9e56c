"""``mdmctl eval gsm8k``: a thin layer over ``mdmctl.evaluation.gsm8k.evaluate_gsm8k``."""

from __future__ import annotations

from pathlib import Path

from mdmctl.cli import options as opt
from mdmctl.cli.common import cli_errors, eval_app, log_info, print_json
from mdmctl.errors import ConfigError


@opt.command(
    eval_app,
    "gsm8k",
    checkpoint=opt.CHECKPOINT,
    data=opt.data("GSM8K jsonl (question / answer). Default: the hub's "
                  "openai/gsm8k test split (online only)."),
    predictions=opt.Opt(("--predictions",), Path | None, None,
                        "Re-score generations from a jsonl (one line per problem) without "
                        "loading a model. Default: none (generate)."),
    out=opt.out("Per-problem jsonl: generation, prediction, verdict. Default: none (not written)."),
    limit=opt.limit("problems only"),
    fewshot=opt.Opt(("--fewshot",), int, 0, "Worked examples before each question.", min=0),
    fewshot_data=opt.Opt(("--fewshot-data",), str | None, None,
                         "jsonl (question / answer) the few-shot examples come from, e.g. the "
                         "train split. Default: none (needed with --fewshot)."),
    total_length=opt.Opt(("--total-length",), int | None, None,
                         "Each stage's canvas: prompt + generated tokens, capped at the model "
                         "context. Default: 256 (SMDM --length 256).", min=2),
    length=opt.Opt(("--length",), int | None, None,
                   "Generate exactly this many tokens per stage instead of filling --total-length. "
                   "Default: fill --total-length.", min=1),
    steps=opt.STEPS.but(type=int, default=256,
                        help="Denoising steps per stage (SMDM --steps 256)."),
    two_stage=opt.Opt(("--two-stage/--one-stage",), bool, True,
                      "Stage 1 writes the reasoning, stage 2 '####' and the answer after it "
                      "(SMDM)."),
    answer_length=opt.Opt(("--answer-length",), int | None, None,
                          "Stage 2 only: generate this many tokens. Default: as stage 1 (--length, "
                          "else fill --total-length).", min=1),
    sampler=opt.SAMPLER,
    temperature=opt.TEMPERATURE.but(default=0.1, help="Sampling temperature; 0 = argmax (SMDM "
                                    "--temperature 0.1)."),
    cfg=opt.CFG.but(default=0.1,
                    help="Unsupervised CFG scale (SMDM --cfg1 0.1; ARM checkpoints: 0)."),
    answer_cfg=opt.CFG.but(flags=("--answer-cfg",), type=float | None, default=None,
                           help="Stage 2's CFG scale (SMDM --cfg2 0.1). Default: --cfg."),
    **opt.DECODING,
    batch_size=opt.GEN_BATCH.but(default=32, note="SMDM: 64."),
    seed=opt.SEED.but(help="Seed of the sampling noise (SMDM: 1234)."),
    **opt.RUNTIME,
    dtype=opt.GEN_DTYPE,
    **opt.json_out("Print accuracy, compliance and settings as JSON on stdout."),
)  # fmt: skip
def eval_gsm8k(o: opt.Options) -> None:
    """GSM8K accuracy: generate, extract the final answer, grade it by mdmctl's rule and by
    SMDM's (the paper's)."""
    from mdmctl.progress import library_progress

    with cli_errors(), library_progress():
        from mdmctl.evaluation.gsm8k import evaluate_gsm8k
        from mdmctl.evaluation.gsm8k_grade import GRADERS

        if o.length is not None and o.total_length is not None:
            raise ConfigError("give --total-length (the canvas) or --length (generated tokens)")
        scfg = opt.sample_config(o)
        r = evaluate_gsm8k(
            checkpoint=scfg.checkpoint, sample_cfg=scfg, total_length=o.total_length or 256,
            predictions=str(o.predictions) if o.predictions else None,
            out=str(o.out) if o.out else None, log=log_info,
            **o.pick("data", "limit", "fewshot", "fewshot_data", "length", "two_stage",
                     "answer_length", "answer_cfg"),
        )  # fmt: skip
        if r.predictions_path:
            log_info(f"wrote {r.predictions_path}")
        if o.json_out:
            print_json({"task": "gsm8k", "accuracy": r.accuracy, "stderr": r.stderr, "n": r.n,
                        "correct": r.correct, "accuracy_smdm": r.accuracy_smdm,
                        "stderr_smdm": r.stderr_smdm, "correct_smdm": r.correct_smdm,
                        "graders": GRADERS, "seconds_per_problem": r.seconds_per_problem,
                        "predictions": r.predictions_path, "compliance": r.compliance,
                        "settings": r.settings})  # fmt: skip
            return
        per = f", {r.seconds_per_problem:.2f} s/problem" if r.seconds_per_problem else ""
        print(
            f"gsm8k accuracy {r.accuracy:.4f} ± {r.stderr:.4f} ({r.correct}/{r.n}{per}), "
            f"{GRADERS['accuracy']}"
        )
        print(f"gsm8k accuracy {r.accuracy_smdm:.4f} ± {r.stderr_smdm:.4f} ({r.correct_smdm}/"
              f"{r.n}), {GRADERS['accuracy_smdm']}")  # fmt: skip
        shares = ", ".join(
            f"{k.replace('_', ' ')} {v:.1%}" for k, v in r.compliance.items() if v is not None
        )
        print(f"format: {shares}")
