"""One registry idiom: names without imports, entries on demand, errors that name the key and the choices."""
import subprocess
import sys

import pytest

from tailfill.registry import Registry

from conftest import REPO


def test_lazy_entries_are_imported_on_first_use_and_errors_name_the_choices():
    r = Registry("select.method")
    r.register("json_dumps", "json:dumps")

    @r.register("twice")
    def twice(x):
        return 2 * x

    assert r.names() == ["json_dumps", "twice"] and "twice" in r and len(r) == 2
    assert r.get("json_dumps")({"a": 1}) == '{"a": 1}' and r["twice"](3) == 6
    with pytest.raises(ValueError, match=r"unknown select.method 'mahal'; choose from json_dumps, twice"):
        r.get("mahal")
    with pytest.raises(ValueError, match="registered twice"):
        r.register("twice", twice)


def test_every_registered_entry_of_the_product_resolves():
    from tailfill.classifier.methods import FEATURE_GENERATORS, METHODS
    from tailfill.data.prepare import DATASETS
    from tailfill.generator.schedulers import SCHEDULERS
    from tailfill.selection.scorers import FEATURE_EXTRACTORS, SCORERS
    from tailfill.stages import STAGES
    from tailfill.classifier.losses import LOSSES

    for registry in (FEATURE_GENERATORS, METHODS, DATASETS, SCHEDULERS, FEATURE_EXTRACTORS, SCORERS, STAGES, LOSSES):
        for name, entry in registry.items():
            assert entry is not None and not isinstance(entry, str), (registry.key, name)
    assert {m.loss for _, m in METHODS.items()} <= set(LOSSES.names())  # every method's loss exists
    assert STAGES.names()[0] == "prepare" and STAGES.names()[-1] == "report"


def test_reading_and_checking_a_config_imports_no_torch():
    code = ("import sys; from tailfill.config import load_config, validate; "
            "validate(load_config('configs/ham10000.yaml', [])); "
            "print(sorted(m for m in ('torch', 'diffusers', 'timm', 'accelerate') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=REPO)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


def test_the_cli_lists_every_registered_dataset_kind_and_stage(capsys):
    from tailfill.cli import main
    from tailfill.data.prepare import DATASETS

    DATASETS.register("hospital_export", lambda d, work_dir, seed: None)
    try:
        with pytest.raises(SystemExit):
            main(["evaluate", "--help"])
        assert "hospital_export" in capsys.readouterr().out
    finally:
        del DATASETS["hospital_export"]
