"""``mdmctl export`` and ``mdmctl import``: thin layers over ``mdmctl.interop``."""

from __future__ import annotations

import json
from dataclasses import asdict
from enum import Enum
from pathlib import Path

import typer

from mdmctl.cli.common import Objective, app, checkpoint_option, cli_errors, json_option, log_info


class WeightDtype(str, Enum):
    float32 = "float32"
    bfloat16 = "bfloat16"
    float16 = "float16"


@app.command("export")
def export_cmd(
    checkpoint: Path | None = checkpoint_option(),
    out: Path | None = typer.Option(
        None, "--out", help="Folder to write. Default: '<run folder>-hf' beside the run."
    ),
    max_shard_size: str = typer.Option(
        "5GB",
        "--max-shard-size",
        help="Largest weights file (5GB, 500MB, 2GiB); above it the weights are split into "
        "model-0000k-of-0000N.safetensors with model.safetensors.index.json.",
    ),
    dtype: WeightDtype = typer.Option(
        WeightDtype.float32, "--dtype", help="Weight dtype in the export (checkpoints are float32)."
    ),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing --out."),
    json_out: bool = json_option("Print what was written as JSON on stdout."),
) -> None:
    """Export a checkpoint to the Hugging Face layout (config.json, model.safetensors, tokenizer
    and generation files). An ARM loads as LlamaForCausalLM; an MDM's config.json says how to load
    it (LlamaModel with a bidirectional mask, plus its head)."""
    with cli_errors():
        from mdmctl.interop import export_hf

        r = export_hf(
            str(checkpoint) if checkpoint else None,
            out,
            max_shard_size=max_shard_size,
            dtype=dtype.value,
            overwrite=overwrite,
        )
        if json_out:
            print(json.dumps({**asdict(r), "out": str(r.out), "checkpoint": str(r.checkpoint)}))
            return
        log_info(
            f"exported {r.checkpoint} ({r.objective.upper()}, {r.n_params / 1e6:.2f}M parameters) "
            f"to {r.out}: {', '.join(r.files)} in {r.seconds:.1f}s"
        )


@app.command("import")
def import_cmd(
    source: Path = typer.Argument(
        ...,
        help="A folder in the Hugging Face layout (config.json, model.safetensors or shards) or "
        "an SMDM .safetensors file (e.g. mdm-1028M-3300e18-rsl-0.01-bs-1024.safetensors).",
    ),
    out: Path | None = typer.Option(
        None, "--out", help="Run folder to write. Default: runs/import-<source name>."
    ),
    tokenizer: str | None = typer.Option(
        None,
        "--tokenizer",
        help="tokenizer.json, a folder holding one, or a hub name (online). Default: the "
        "source folder's tokenizer.json; SMDM files need one (SMDM: "
        "TinyLlama/TinyLlama-1.1B-intermediate-step-1431k-3T).",
    ),
    objective: Objective | None = typer.Option(
        None,
        "--objective",
        help="Default: what the source says (mdmctl exports, SMDM's embedding shapes), else arm. "
        "mdm on a plain Llama starts an MDM from an ARM's weights (the mask token is added).",
    ),
    n_heads: int | None = typer.Option(
        None,
        "--n-heads",
        min=1,
        help="Attention heads, for SMDM shapes outside its family. Default: the SMDM size's.",
    ),  # fmt: skip
    seq_len: int | None = typer.Option(
        None, "--seq-len", min=1, help="Context length. Default: the source's (SMDM: 2048)."
    ),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing --out."),
    json_out: bool = json_option("Print the imported checkpoint as JSON on stdout."),
) -> None:
    """Import Hugging Face Llama weights or SMDM's released checkpoints as an mdmctl run folder
    (then: sample, eval, finetune --init)."""
    with cli_errors():
        from mdmctl.interop import import_model

        r = import_model(
            source,
            out,
            tokenizer=tokenizer,
            objective=objective.value if objective else None,
            n_heads=n_heads,
            seq_len=seq_len,
            overwrite=overwrite,
            log=log_info,
        )
        if json_out:
            print(json.dumps({**asdict(r), "out": str(r.out), "step_dir": str(r.step_dir)}))
            return
        m = r.model
        log_info(
            f"imported {source} ({r.layout} layout) as an {m['objective'].upper()} "
            f"{m['name']} ({m['n_layers']}x{m['d_model']}, vocab {m['vocab_size']}, context "
            f"{m['seq_len']}) in {r.seconds:.1f}s: {r.step_dir}"
        )
