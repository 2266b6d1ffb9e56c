"""Hub datasets for users who are online; offline, a fast typed failure that says what to pass."""

from __future__ import annotations

import os
from typing import Any

from mdmctl.errors import DataError


def load_hub_split(path: str, name: str | None, split: str, hint: str) -> list[dict[str, Any]]:
    """Rows of ``path``/``name`` ``split`` from the Hugging Face hub (cached by ``datasets``)."""
    where = f"{path}{'/' + name if name else ''} ({split})"
    if os.environ.get("HF_HUB_OFFLINE") == "1" or os.environ.get("HF_DATASETS_OFFLINE") == "1":
        raise DataError(f"{where}: the hub is switched off (HF_HUB_OFFLINE); {hint}")
    import socket

    try:  # fail in well under a second when there is no network, instead of a long retry loop
        socket.create_connection(("huggingface.co", 443), timeout=0.5).close()
    except OSError as e:
        raise DataError(f"{where}: hub unreachable ({e.strerror or e}); {hint}") from None
    import datasets

    try:
        ds = datasets.load_dataset(path, name, split=split)
    except Exception as e:  # many exception types for network / auth / missing data
        raise DataError(f"{where}: could not be loaded ({type(e).__name__}); {hint}") from None
    return [dict(r) for r in ds]
