"""Rules of the code's shape, checked on the source: public seams between modules, every file the
code cites exists, each CLI option defined once, the model's block free of cache layouts."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
import typer

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src" / "mdmctl"
SOURCES = sorted(SRC.rglob("*.py"))


def _rel(p: Path) -> str:
    return str(p.relative_to(ROOT))


def test_no_module_imports_another_modules_private_names():
    """In the package, the benchmarks, the examples and the tests alike."""
    bad = []
    scripts = [p for d in ("benchmarks", "examples", "tests") for p in (ROOT / d).rglob("*.py")]
    for p in SOURCES + scripts:
        for node in ast.walk(ast.parse(p.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("mdmctl"):
                bad += [f"{_rel(p)}:{node.lineno} {node.module}.{a.name}" for a in node.names
                        if a.name.startswith("_") and not a.name.startswith("__")]  # fmt: skip
    assert not bad, "private names imported across modules:\n" + "\n".join(bad)


def test_the_private_import_check_catches_one(tmp_path):
    # The rule above reads ImportFrom nodes: one that names a private name is flagged.
    tree = ast.parse("from mdmctl.train.loop import _Run\n")
    names = [a.name for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) for a in n.names]
    assert names == ["_Run"]


# `docs/method.md §5.4`, `README.md`; not a dotted module path such as mdmctl.sampling.mdm.
CITATION = re.compile(r"(?<![\w./-])((?:docs/)?[\w-]+\.md)\b(?: ?§ ?(\d+(?:\.\d+)?))?")


def _citations() -> list[tuple[str, str, str | None]]:
    found = []
    for p in SOURCES:
        for m in CITATION.finditer(p.read_text(encoding="utf-8")):
            found.append((_rel(p), m.group(1), m.group(2)))
    return found


def test_every_file_the_code_cites_exists_in_the_repository():
    cited = _citations()
    assert len(cited) > 20  # the pattern finds the references
    missing = [f"{src}: {doc}" for src, doc, _ in cited if not (ROOT / doc).is_file()]
    assert not missing, "cited but not in the repository:\n" + "\n".join(missing)
    bare = [f"{src}: {doc}" for src, doc, _ in cited if "/" not in doc and doc != "README.md"]
    assert not bare, "cite docs by their path (docs/NAME.md):\n" + "\n".join(bare)


def test_every_method_section_the_code_cites_exists():
    headings = set(re.findall(r"^#+ §(\d+(?:\.\d+)?) ", (ROOT / "docs/method.md").read_text(),
                              re.M))  # fmt: skip
    cited = {(src, sec) for src, doc, sec in _citations() if doc == "docs/method.md" and sec}
    assert cited
    missing = [f"{src}: §{sec}" for src, sec in sorted(cited) if sec not in headings]
    assert not missing, "docs/method.md has no such section:\n" + "\n".join(missing)


def test_the_sampling_front_file_only_re_exports():
    tree = ast.parse((SRC / "sampling" / "__init__.py").read_text(encoding="utf-8"))
    defs = [n.name for n in tree.body if isinstance(n, ast.FunctionDef | ast.ClassDef)]
    assert defs == ["__getattr__"]


def test_the_models_block_knows_no_cache_layout():
    text = (SRC / "model.py").read_text(encoding="utf-8")
    for layout_field in (".positions", ".column", ".offset", ".write", ".bidirectional"):
        assert f"cache{layout_field}" not in text, layout_field


def _options(path: list[str]) -> dict[str, str]:
    from mdmctl.cli import app

    cmd = typer.main.get_command(app)
    for name in path:
        cmd = cmd.commands[name]
    return {p.opts[0]: p.help for p in cmd.params if p.param_type_name == "option"}


@pytest.mark.parametrize(
    "flag",
    ["--remasking", "--block-length", "--threshold", "--factor", "--top-k", "--top-p",
     "--min-length", "--cache", "--cache-window", "--suffix-window", "--compile", "--cuda-graphs",
     "--sampler", "--device", "--attention"],
)  # fmt: skip
def test_a_shared_option_has_one_help_in_every_command(flag):
    """The generating commands take the decoding options from one definition (the config
    fields' metadata), so their help is the same text everywhere."""
    from dataclasses import fields

    from mdmctl.config import RunConfig
    from mdmctl.sampling.config import SampleConfig
    from mdmctl.sampling.decoding import Decoding

    helps = {" ".join(p): _options(p)[flag] for p in (["sample"], ["eval", "gsm8k"],
                                                      ["eval", "reverse-curse"])}  # fmt: skip
    assert len(set(helps.values())) == 1, helps
    name = flag.removeprefix("--").replace("-", "_")
    source = [f.metadata["help"] for cls in (Decoding, SampleConfig, RunConfig)
              for f in fields(cls) if f.name == name and "help" in f.metadata]  # fmt: skip
    assert source and next(iter(helps.values())).startswith(source[0])


def test_pretrain_and_finetune_share_their_training_options():
    pre, fine = _options(["pretrain"]), _options(["finetune"])
    for flag in ("--lr", "--warmup-steps", "--val-every", "--save-every", "--keep-last",
                 "--parallel", "--activation-checkpointing", "--resume", "--overwrite",
                 "--device", "--dtype", "--attention"):  # fmt: skip
        assert pre[flag] == fine[flag], flag
