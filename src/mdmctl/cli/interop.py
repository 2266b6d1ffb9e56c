"""``mdmctl export`` and ``mdmctl import``: thin layers over ``mdmctl.interop``."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

from mdmctl.cli.common import app, cli_errors, log_info
from mdmctl.cli.options import (
    CHECKPOINT,
    Opt,
    Options,
    argument,
    choice,
    command,
    from_field,
    json_out,
    out,
)
from mdmctl.config import ModelConfig

OVERWRITE = Opt(("--overwrite",), bool, False, "Replace an existing --out.")


@command(
    app,
    "export",
    checkpoint=CHECKPOINT,
    out=out("Folder to write. Default: '<run folder>-hf' beside the run."),
    max_shard_size=Opt(("--max-shard-size",), str, "5GB",
                       "Largest weights file (5GB, 500MB, 2GiB); above it the weights are split "
                       "into model-0000k-of-0000N.safetensors with model.safetensors.index.json."),
    dtype=Opt(("--dtype",), choice(("float32", "bfloat16", "float16"), "dtype"), "float32",
              "Weight dtype in the export (checkpoints are float32)."),
    overwrite=OVERWRITE,
    **json_out("Print what was written as JSON on stdout."),
)  # fmt: skip
def export(o: Options) -> None:
    """Export a checkpoint to the Hugging Face layout (config.json, model.safetensors, tokenizer
    and generation files). An ARM loads as LlamaForCausalLM; an MDM's config.json says how to load
    it (LlamaModel with a bidirectional mask, plus its head)."""
    with cli_errors():
        from mdmctl.interop import export_hf

        r = export_hf(str(o.checkpoint) if o.checkpoint else None, o.out,
                      **o.pick("max_shard_size", "dtype", "overwrite"))  # fmt: skip
        if o.json_out:
            print(json.dumps({**asdict(r), "out": str(r.out), "checkpoint": str(r.checkpoint)}))
            return
        log_info(
            f"exported {r.checkpoint} ({r.objective.upper()}, {r.n_params / 1e6:.2f}M parameters) "
            f"to {r.out}: {', '.join(r.files)} in {r.seconds:.1f}s"
        )


@command(
    app,
    "import",
    source=argument(Path, ..., "A folder in the Hugging Face layout (config.json, "
                    "model.safetensors or shards) or an SMDM .safetensors file (e.g. "
                    "mdm-1028M-3300e18-rsl-0.01-bs-1024.safetensors)."),
    out=out("Run folder to write. Default: runs/import-<source name>."),
    tokenizer=Opt(("--tokenizer",), str | None, None,
                  "tokenizer.json, a folder holding one, or a hub name (online). Default: the "
                  "source folder's tokenizer.json; SMDM files need one (SMDM: "
                  "TinyLlama/TinyLlama-1.1B-intermediate-step-1431k-3T)."),
    objective=from_field(ModelConfig, "objective", given_default=True).but(
        help="Default: what the source says (mdmctl exports, SMDM's embedding shapes), else arm. "
        "mdm on a plain Llama starts an MDM from an ARM's weights (the mask token is added)."),
    n_heads=Opt(("--n-heads",), int | None, None, "Attention heads, for SMDM shapes outside its "
                "family. Default: the SMDM size's.", min=1),
    seq_len=Opt(("--seq-len",), int | None, None,
                "Context length. Default: the source's (SMDM: 2048).", min=1),
    overwrite=OVERWRITE,
    **json_out("Print the imported checkpoint as JSON on stdout."),
)  # fmt: skip
def import_(o: Options) -> None:
    """Import Hugging Face Llama weights or SMDM's released checkpoints as an mdmctl run folder
    (then: sample, eval, finetune --init)."""
    with cli_errors():
        from mdmctl.interop import import_model

        r = import_model(
            o.source,
            o.out,
            log=log_info,
            **o.pick("tokenizer", "objective", "n_heads", "seq_len", "overwrite"),
        )
        if o.json_out:
            print(json.dumps({**asdict(r), "out": str(r.out), "step_dir": str(r.step_dir)}))
            return
        m = r.model
        log_info(
            f"imported {o.source} ({r.layout} layout) as an {m['objective'].upper()} "
            f"{m['name']} ({m['n_layers']}x{m['d_model']}, vocab {m['vocab_size']}, context "
            f"{m['seq_len']}) in {r.seconds:.1f}s: {r.step_dir}"
        )
