"""``mdmctl tokenize``: a thin layer over ``mdmctl.data.shards.tokenize_corpus``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mdmctl.cli.common import app, cli_errors, log_info, print_json
from mdmctl.cli.options import Opt, Options, argument, command, json_out
from mdmctl.config import DEFAULT_DATA


def tokenize_with_progress(cfg: Any) -> Any:
    """``tokenize_corpus`` with a progress display (documents and tokens so far)."""
    from mdmctl.data.shards import tokenize_corpus
    from mdmctl.progress import ProgressReporter

    with ProgressReporter(f"tokenizing {cfg.corpus.description}") as bar:

        def progress(docs: int, tokens: int) -> None:
            bar.update(docs, status=f"documents, {tokens:,} tokens")

        return tokenize_corpus(cfg, progress=progress, log=log_info)


@command(
    app,
    "tokenize",
    inputs=argument(list[str], None, "Text files or folders (.txt, .jsonl[.gz], .parquet). "
                    "Default: the built-in corpus."),
    dataset=Opt(("--dataset",), str | None, None,
                "A datasets hub id instead of files. Default: none."),
    config=Opt(("--config",), str | None, None,
               "Hub dataset config name. Default: the dataset's default."),
    split=Opt(("--split",), str, "train", "Hub dataset split."),
    text_field=Opt(("--text-field",), str, "text", "Field holding the text (jsonl, parquet, hub)."),
    tokenizer=Opt(("--tokenizer",), str | None, None,
                  "Existing tokenizer: a tokenizer.json, a folder holding one (Hugging Face "
                  "layout) or a hub name such as TinyLlama/TinyLlama-1.1B-intermediate-step-1431k"
                  "-3T (online). A missing mask token is added. Default: train a byte-level BPE."),
    vocab_size=Opt(("--vocab-size",), int | None, None,
                   "BPE vocabulary size when training. Default: 1024 for the built-in corpus, "
                   "else 4096.", min=300),
    eos_token=Opt(("--eos-token",), str | None, None,
                  "Name of the end-of-text token in --tokenizer. Default: the first it has of "
                  "<|endoftext|>, </s>, <eos>, [EOS], <|eot_id|>, <|end_of_text|>, [SEP]."),
    val_fraction=Opt(("--val-fraction",), float, 0.01,
                     "Share of documents held out for validation."),
    shard_tokens=Opt(("--shard-tokens",), int, 50_000_000, "Tokens per shard file.", min=1024),
    max_docs=Opt(("--max-docs",), int | None, None,
                 "Stop after this many documents. Default: all.", min=1),
    out=Opt(("--out",), Path, Path(DEFAULT_DATA), "Output folder."),
    **json_out("Print corpus.json to stdout."),
)  # fmt: skip
def tokenize(o: Options) -> None:
    """Train or load a tokenizer and write packed token shards plus corpus.json."""
    with cli_errors():
        from mdmctl.data.readers import CorpusSpec
        from mdmctl.data.shards import TokenizeConfig
        from mdmctl.log import results_console

        spec = CorpusSpec(paths=tuple(o.inputs or ()), **o.pick("dataset", "config", "split",
                                                                "text_field"))  # fmt: skip
        manifest = tokenize_with_progress(
            TokenizeConfig(corpus=spec, out=str(o.out), **o.pick(
                "tokenizer", "vocab_size", "eos_token", "val_fraction", "shard_tokens", "max_docs"))
        )  # fmt: skip
        m = manifest.meta
        if o.json_out:
            print_json(m)
            return
        results_console().print(
            f"wrote {o.out}: {m['documents']} documents, {m['splits']['train']['tokens']:,} "
            f"train / {m['splits']['val']['tokens']:,} val tokens ({m['dtype']}), vocab "
            f"{m['tokenizer']['vocab_size']}, in {m['seconds']:.1f}s"
        )
