"""Kept for imports written against tailfill <= 0.1: the run directory lives in :mod:`tailfill.run`, the
stages in :mod:`tailfill.stages`."""
from .run import Run, RunDirError, RunLayout  # noqa: F401
from .stages import MAIN_ONLY, STAGES, run_all, run_stage  # noqa: F401
