"""CLI help: every option of every command has help and shows its default, square brackets in help
survive rendering, and eval subcommands answer to both '-' and '_' spellings. CliRunner only (fast,
no torch)."""

from __future__ import annotations

from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from mdmctl.cli import app

runner = CliRunner()


def _commands() -> list[tuple[list[str], Any]]:
    """(path, command) for every leaf command and group, root first."""
    out: list[tuple[list[str], Any]] = []

    def walk(cmd: Any, path: list[str]) -> None:
        out.append((path, cmd))
        for name, sub in (getattr(cmd, "commands", None) or {}).items():
            walk(sub, [*path, name])

    walk(typer.main.get_command(app), [])
    return out


COMMANDS = _commands()
IDS = [" ".join(p) or "mdmctl" for p, _ in COMMANDS]


def _help(path: list[str]) -> str:
    r = runner.invoke(app, [*path, "--help"])
    assert r.exit_code == 0, r.output
    return r.stdout


def _squash(text: str) -> str:
    """Help text without whitespace: click wraps lines (also at hyphens)."""
    return "".join(text.split())


@pytest.mark.parametrize(("path", "cmd"), COMMANDS, ids=IDS)
def test_help_renders_every_option_with_help_and_default(path, cmd):
    text = _help(path)
    assert "[default: None]" not in text
    assert "<bool>" not in text  # boolean options render as flags (--json, --x/--no-x)
    for p in cmd.params:
        if p.param_type_name != "option":
            continue
        name = " ".join(path + [p.opts[0]])
        assert p.help and p.help.strip(), f"{name}: no help"
        if p.default is None and not p.is_flag and not p.required:
            # The real default is decided at run time: the help must say what it is.
            assert "default" in p.help.lower(), f"{name}: default None and no default in help"
        assert p.opts[0] in text, f"{name}: missing from --help"


BRACKETED = [
    (["pretrain"], "[model] and [train]"),
    (["eval", "lm-eval"], "pip install 'mdmctl[eval]'"),
    (["scaling", "fit"], "pip install 'mdmctl[plot]'"),
    (["tokenize"], ".jsonl[.gz]"),
    (["tokenize"], "[EOS], <|eot_id|>, <|end_of_text|>, [SEP]"),
]


@pytest.mark.parametrize(("path", "needle"), BRACKETED, ids=[n for _, n in BRACKETED])
def test_square_brackets_survive_rendering(path, needle):
    assert _squash(needle) in _squash(_help(path))


@pytest.mark.parametrize(
    ("typed", "registered"),
    [
        ("arc-easy", "arc_easy"),
        ("arc_easy", "arc_easy"),
        ("arc-challenge", "arc_challenge"),
        ("social-iqa", "social_iqa"),
        ("reverse_curse", "reverse-curse"),
        ("reverse-curse", "reverse-curse"),
        ("lm_eval", "lm-eval"),
        ("lm-eval", "lm-eval"),
    ],
)
def test_eval_subcommands_take_both_spellings(typed, registered):
    assert f"Usage: mdmctl eval {registered} [OPTIONS]" in _help(["eval", typed])


def _listed_commands(text: str) -> list[str]:
    lines = text.split("Commands:", 1)[1].splitlines()
    return [ln.split()[0] for ln in lines if ln.startswith("  ") and not ln.startswith("   ")]


def test_eval_help_lists_canonical_names_once():
    text = _help(["eval"])
    names = _listed_commands(text)
    assert names.count("arc_easy") == 1
    assert "reverse-curse" in names and "lm-eval" in names
    for alias in ("arc-easy", "arc-challenge", "social-iqa", "reverse_curse", "lm_eval"):
        assert alias not in names
    assert len(names) == len(set(names))
    assert "'-' and '_' are interchangeable" in " ".join(text.split())


def test_unknown_eval_subcommand_still_fails():
    r = runner.invoke(app, ["eval", "arc-eazy"])
    assert r.exit_code == 2
    assert "No such command" in r.output


def test_eval_all_tasks_take_both_spellings(monkeypatch):
    from mdmctl.cli import eval_zero_shot

    seen = {}
    monkeypatch.setattr(eval_zero_shot, "_zero_shot", lambda names, o: seen.update(names=names))
    r = runner.invoke(app, ["eval", "all", "--tasks", "arc-easy, arc_challenge,social-iqa,piqa"])
    assert r.exit_code == 0, r.output
    assert seen["names"] == ["arc_easy", "arc_challenge", "social_iqa", "piqa"]
    # Unknown names pass through unchanged, for the library's error message.
    runner.invoke(app, ["eval", "all", "--tasks", "arc-eazy"])
    assert seen["names"] == ["arc-eazy"]


def test_reverse_curse_split_names_take_both_spellings():
    from mdmctl.cli.eval_reverse_curse import split_name

    known = {"p2d_same": 0, "d2p_reverse": 1}
    assert split_name("p2d-same", known) == "p2d_same"
    assert split_name("d2p_reverse", known) == "d2p_reverse"
    assert split_name("p2d-backwards", known) == "p2d-backwards"
