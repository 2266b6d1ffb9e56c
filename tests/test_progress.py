"""Progress in a log file: plain periodic lines instead of a bar that redraws in place."""

from __future__ import annotations

from mdmctl.progress import ProgressReporter


def test_plain_lines_when_not_a_terminal(capsys, monkeypatch):
    monkeypatch.setenv("MDMCTL_PROGRESS_EVERY", "3600")  # only the first and the last line
    with ProgressReporter("train", total=10) as bar:
        assert bar.plain  # pytest's captured stderr is not a terminal
        for step in range(1, 11):
            bar.update(step, status=f"loss {1 / step:.2f}")
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 2
    assert lines[0] == "train  1/10 (10%)  loss 1.00  elapsed 0:00"  # no rate known yet
    assert lines[1].startswith("train  10/10 (100%)  loss 0.10  elapsed ")
    assert "ETA" not in lines[1]


def test_every_update_printed_with_interval_zero_and_unknown_total(capsys, monkeypatch):
    monkeypatch.setenv("MDMCTL_PROGRESS_EVERY", "0")
    with ProgressReporter("tokenizing x") as bar:
        for docs in (100, 200, 300):
            bar.update(docs, status="documents")
    lines = capsys.readouterr().err.splitlines()
    assert [ln.split("  ")[1] for ln in lines] == ["100", "200", "300"]
    assert "ETA" not in "".join(lines)  # no total, no estimate


def test_eta_from_the_rate_since_the_first_update(capsys, monkeypatch):
    # A resumed run's first update is step 500 of 1000: the rate counts from there.
    monkeypatch.setenv("MDMCTL_PROGRESS_EVERY", "0")
    with ProgressReporter("train", total=1000) as bar:
        bar.update(500)
        bar.update(501)
    assert "ETA" in capsys.readouterr().err.splitlines()[1]


def test_library_loops_show_one_display_at_a_time(capsys, monkeypatch):
    from mdmctl.progress import library_progress, report

    monkeypatch.setenv("MDMCTL_PROGRESS_EVERY", "0")
    report("unseen", 1, 1)  # no hook installed: nothing happens
    with library_progress():
        for label, done, total in [("a", 1, 2), ("a", 2, 2), ("b", 1, 1), ("a", 1, 3)]:
            report(label, done, total)
    lines = capsys.readouterr().err.splitlines()
    assert [ln.split("  ")[:2] for ln in lines] == [
        ["a", "1/2 (50%)"],
        ["a", "2/2 (100%)"],
        ["b", "1/1 (100%)"],
        ["a", "1/3 (33%)"],  # a loop that starts over gets a fresh display (and rate)
    ]


def test_eval_reports_progress_in_a_log_file(ckpts, monkeypatch):
    from .conftest import run

    monkeypatch.setenv("MDMCTL_PROGRESS_EVERY", "0")
    r = run("eval", "ppl", "--checkpoint", ckpts["arm"], "--max-windows", "3", "--batch-size", "1")
    assert "perplexity windows  3/3 (100%)" in r.stderr
