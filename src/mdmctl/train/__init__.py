"""Training: the loop shared by pretraining and fine-tuning, and the two jobs it runs.

- ``loop``: ``Job`` (what differs between the two) and ``run_job`` (set up, train steps, save,
  report), ``TrainResult``, the learning-rate schedule ``lr_at``
- ``run_dir``: the run folder's resume / overwrite / set-aside rules; ``lock``: one run per folder
- ``pretraining``: ``pretrain(RunConfig)`` from scratch on a tokenized corpus
- ``finetuning``: ``finetune(FinetuneConfig)`` from a checkpoint on prompt/response examples
"""

from __future__ import annotations

from mdmctl.train.finetuning import finetune
from mdmctl.train.loop import Interrupted, Job, TrainResult, lr_at, run_job
from mdmctl.train.pretraining import pretrain, unigram_entropy, validate

__all__ = [
    "Interrupted",
    "Job",
    "TrainResult",
    "finetune",
    "lr_at",
    "pretrain",
    "run_job",
    "unigram_entropy",
    "validate",
]
