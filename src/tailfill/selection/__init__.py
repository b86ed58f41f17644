"""Step 4, OOD post-selection: scorers (``scorers``), the selector fitted on real images and what is used
(``selector``), and the independent fidelity judge (``judge``)."""
from ..utils.lazy import lazy_exports

# each public name -> its submodule, imported on first use: the package's light parts (the names a config is
# checked against) import no torch
__getattr__, __all__ = lazy_exports(__name__, {
    "FidelityJudge": "judge",
    "KNNScorer": "scorers",
    "MahalanobisScorer": "scorers",
    "OODSelector": "selector",
    "SCORERS": "scorers",
    "build_scorer": "scorers",
    "choose_for_deficits": "selector",
    "realism_auroc": "scorers",
    "select_synthetic": "selector",
})
