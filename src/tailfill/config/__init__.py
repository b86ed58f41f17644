"""Run configuration: nested dataclasses loaded from YAML, strict about unknown keys.

The defaults *are* the demo: ``tailfill run`` with no config draws a small synthetic
long-tailed dermoscopy-like set and runs every stage at 32 px on a CPU in minutes.
A YAML file overrides any subset, e.g. ``configs/isic2019.yaml``. One section per module that reads it
(:mod:`.sections`); loading, overrides and moved keys in :mod:`.load`; ranges and cross-field rules in
:mod:`.checks`. Nothing here imports torch.
"""
from .checks import RANGES, check_ranges, in_range, numeric_values, validate  # noqa: F401
from .load import (MOVED, config_from_dict, load_config, parse_overrides, set_dotted, upgrade_config,  # noqa: F401
                   upgrade_file)
from .sections import (AutoencoderConfig, ClassifierConfig, Config, DataConfig, DiffusionConfig,  # noqa: F401
                       ExperimentalConfig, GenerateConfig, HeadConfig, MixingConfig, SelectConfig)
