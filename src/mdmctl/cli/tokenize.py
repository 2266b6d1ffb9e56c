"""``mdmctl tokenize``: a thin layer over ``mdmctl.data.shards.tokenize_corpus``."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from mdmctl.cli.common import DEFAULT_DATA, app, cli_errors, finite_option, tokenize_with_progress


@app.command()
def tokenize(
    inputs: list[str] = typer.Argument(
        None,
        help="Text files or folders (.txt, .jsonl[.gz], .parquet). Default: the built-in corpus.",
    ),
    dataset: str | None = typer.Option(
        None, "--dataset", help="A datasets hub id instead of files. Default: none."
    ),
    config: str | None = typer.Option(
        None, "--config", help="Hub dataset config name. Default: the dataset's default."
    ),
    split: str = typer.Option("train", "--split", help="Hub dataset split."),
    text_field: str = typer.Option(
        "text", "--text-field", help="Field holding the text (jsonl, parquet, hub)."
    ),
    tokenizer: str | None = typer.Option(
        None,
        "--tokenizer",
        help="Existing tokenizer: a tokenizer.json, a folder holding one (Hugging Face layout) or "
        "a hub name such as TinyLlama/TinyLlama-1.1B-intermediate-step-1431k-3T (online). A missing mask token is added. "
        "Default: train a byte-level BPE.",
    ),
    vocab_size: int | None = typer.Option(
        None,
        "--vocab-size",
        min=300,
        help="BPE vocabulary size when training. Default: 1024 for the built-in corpus, else 4096.",
    ),
    eos_token: str | None = typer.Option(
        None,
        "--eos-token",
        help="Name of the end-of-text token in --tokenizer. Default: the first it has of "
        "<|endoftext|>, </s>, <eos>, [EOS], <|eot_id|>, <|end_of_text|>, [SEP].",
    ),
    val_fraction: float = typer.Option(
        0.01, "--val-fraction", help="Share of documents held out for validation.", callback=finite_option
    ),
    shard_tokens: int = typer.Option(
        50_000_000, "--shard-tokens", min=1024, help="Tokens per shard file."
    ),
    max_docs: int | None = typer.Option(
        None, "--max-docs", min=1, help="Stop after this many documents. Default: all."
    ),
    out: Path = typer.Option(DEFAULT_DATA, "--out", help="Output folder."),
    json_out: bool = typer.Option(False, "--json", help="Print corpus.json to stdout."),
) -> None:
    """Train or load a tokenizer and write packed token shards plus corpus.json."""
    with cli_errors():
        from mdmctl.data.readers import CorpusSpec
        from mdmctl.data.shards import TokenizeConfig
        from mdmctl.log import results_console

        spec = CorpusSpec(
            paths=tuple(inputs or ()),
            dataset=dataset,
            config=config,
            split=split,
            text_field=text_field,
        )
        cfg = TokenizeConfig(
            corpus=spec,
            out=str(out),
            tokenizer=str(tokenizer) if tokenizer else None,
            vocab_size=vocab_size,
            eos_token=eos_token,
            val_fraction=val_fraction,
            shard_tokens=shard_tokens,
            max_docs=max_docs,
        )
        manifest = tokenize_with_progress(cfg)
        m = manifest.meta
        if json_out:
            print(json.dumps(m, indent=2))
        else:
            results_console().print(
                f"wrote {out}: {m['documents']} documents, {m['splits']['train']['tokens']:,} train / "
                f"{m['splits']['val']['tokens']:,} val tokens ({m['dtype']}), vocab "
                f"{m['tokenizer']['vocab_size']}, in {m['seconds']:.1f}s"
            )
