"""mdmctl: masked diffusion language models (MDMs) and their autoregressive baseline (ARM).

Importing the package is cheap: no torch, no tokenizers. The library entry points live in their
modules (``mdmctl.train.pretrain``, ``mdmctl.sampling.sample_from_checkpoint``, ...).
"""

__version__ = "0.1.0"
