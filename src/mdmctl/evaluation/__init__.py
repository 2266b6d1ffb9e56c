"""Evaluation: the likelihood engine (``likelihood``), zero-shot benchmarks (``benchmarks``,
``zero_shot``), generation tasks (``gsm8k``, ``reverse_curse``), held-out perplexity (``ppl``)
and the lm-evaluation-harness model (``lm_eval_adapter``)."""
