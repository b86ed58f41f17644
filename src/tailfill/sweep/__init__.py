"""``tailfill sweep``: variants of one base config, each an ordinary run, sharing every stage output whose inputs
are identical.

    # spec.yaml
    base: configs/ham10000.yaml          # a config file (optional: the defaults otherwise)
    set: {classifier.seeds: [0, 1]}      # overrides for every variant
    out: runs/sweep_ham                  # the sweep's directory
    splits: [0, 1, 2]                    # data splits (the top-level seed), pooled by compare (optional)
    controls: [real_oversample]          # variants added for you (CONTROLS)
    variants:                            # name: overrides of the base
      real: {}
      synth_same: {generate.context_classes: same}

Layout: ``out/sweep.yaml`` (the spec as run), ``out/<variant>/`` (an ordinary run directory, or with
``splits`` one per split, ``out/<variant>/split_<s>/``; with ``data.folds``, ``.../fold_<i>/`` too), ``out/store/<stage>/<key>/`` (what a stage wrote). A stage's
key hashes exactly the config fields it reads (``STAGE_INPUTS``) and the keys of the stages it reads from,
so a run whose inputs to a stage match an earlier one's links that output instead of computing it: the
baselines, autoencoder, generator and pool of variants that differ only downstream are made once, and a new
seed trains only its own classifiers. Each variant can run as its own job (``--variant``/``--index``);
jobs that meet on one key each compute it and the first to finish publishes it.
"""
from .keys import (  # noqa: F401
                   FIT_SETTINGS,
                   PER_FIT,
                   PER_RUN,
                   STAGE_INPUTS,
                   STAGE_OUTPUTS,
                   _digest,
                   _fields,
                   baseline_keys,
                   stage_key,
)
from ..baselines import feature_method  # noqa: F401
from .spec import CONTROLS, SweepSpec, run_sweep  # noqa: F401
from .store import Store  # noqa: F401
from .archive import archive  # noqa: F401
