"""Step 6, evaluation and report: ISIC metrics, intervals and submission files (``metrics``), the report's
tables (``tables``) and plots (``plots``), and the page (``report``)."""

import importlib

# name -> submodule: imported on first use, so reading the package's light parts (a config's names) needs
# no torch
_LAZY = {
    "balanced_accuracy": "metrics",
    "bootstrap_ci": "metrics",
    "classification_metrics": "metrics",
    "submission_frame": "metrics",
    "write_report": "report",
}
__all__ = sorted(_LAZY)


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
