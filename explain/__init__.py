"""cnn-explain: see what convolutional networks see.

The package imports no torch until something that needs it is used, so that command-line help is instant.

Example:
    >>> from explain import load_backbone
    >>> bb = load_backbone("efficientnet_lite0")
    >>> bb.class_names[282]
    'tiger cat'
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "load_backbone": "explain.backbones",
    "list_backbones": "explain.backbones",
    "Backbone": "explain.backbones",
    "predict": "explain.predict",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'explain' has no attribute {name!r}")
