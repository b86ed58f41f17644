"""Step 6, evaluation and report: ISIC metrics, intervals and submission files (``metrics``), the report's
tables (``tables``) and plots (``plots``), and the page (``report``)."""
from ..utils.lazy import lazy_exports

# each public name -> its submodule, imported on first use: the package's light parts (the names a config is
# checked against) import no torch
__getattr__, __all__ = lazy_exports(__name__, {
    "balanced_accuracy": "metrics",
    "bootstrap_ci": "metrics",
    "classification_metrics": "metrics",
    "submission_frame": "metrics",
    "write_report": "report",
})
