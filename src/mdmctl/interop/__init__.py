"""Interoperability (docs/interop.md): the Hugging Face layout and SMDM's released checkpoints.

- ``keys``: parameter names and the q/k/v packing of mdmctl, HF Llama and SMDM (lit_gpt)
- ``hf``: the HF layout's JSON files (config, generation config, tokenizer files)
- ``files``: safetensors weights, one file or shards with an index
- ``convert``: ``export_hf`` (checkpoint -> HF folder), ``import_model`` (HF folder or SMDM file ->
  mdmctl run folder)
"""

from mdmctl.interop.convert import ExportResult, ImportResult, export_hf, import_model

__all__ = ["ExportResult", "ImportResult", "export_hf", "import_model"]
