"""A package whose public names live in its submodules, imported on first use (PEP 562), so that importing
one light submodule (a registry of names) does not import torch through the package."""
from __future__ import annotations

import importlib


def lazy_exports(package: str, table: dict[str, str]):
    """``(__getattr__, __all__)`` for ``package``: ``table`` maps each public name to its submodule."""
    def __getattr__(name: str):
        if name in table:
            return getattr(importlib.import_module(f".{table[name]}", package), name)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    return __getattr__, sorted(table)
