"""Evaluation tasks. ``ppl`` (held-out likelihood) lives in ``evaluation.ppl``."""

TASKS = ("ppl",)
