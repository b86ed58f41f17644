"""Step 4, OOD post-selection: scorers (``scorers``), the selector fitted on real images and what is used
(``selector``), and the independent fidelity judge (``judge``)."""

import importlib

# name -> submodule: imported on first use, so reading the package's light parts (a config's names) needs
# no torch
_LAZY = {
    "FidelityJudge": "judge",
    "KNNScorer": "scorers",
    "MahalanobisScorer": "scorers",
    "OODSelector": "selector",
    "SCORERS": "scorers",
    "build_scorer": "scorers",
    "choose_for_deficits": "selector",
    "realism_auroc": "scorers",
    "select_synthetic": "selector",
}
__all__ = sorted(_LAZY)


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
