"""Models: cards (torch-free), backbones from local weights, MIL aggregators and their inference.

The aggregator classes are imported on first use, so reading a model card (what ``wsi-ai
models`` and every command's start-up do) does not pay for importing torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from wsi_ai.nn.abmil import GatedABMIL
    from wsi_ai.nn.mil import MILOutput
    from wsi_ai.nn.vit_mil import ViTMIL

_LAZY = {
    "GatedABMIL": "wsi_ai.nn.abmil",
    "MILOutput": "wsi_ai.nn.mil",
    "ViTMIL": "wsi_ai.nn.vit_mil",
}

__all__ = ["GatedABMIL", "MILOutput", "ViTMIL"]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'wsi_ai.nn' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
