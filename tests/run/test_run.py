"""The run directory's layout: every path in one place, the fits listed by kind, method and seed."""
from tailfill.run import RunLayout


def test_fits_are_listed_by_kind_method_and_seed_number(tmp_path):
    layout = RunLayout(tmp_path)
    for kind, method, seed in (("baseline", "ce", 10), ("baseline", "ce", 2), ("augmented", "ce", 0),
                               ("baseline", "focal", 1)):
        layout.classifier(kind, method, seed).mkdir(parents=True)
    (layout.classifier("baseline", "ce", 2) / "metrics.json").write_text("{}")
    (layout.classifiers / "baseline" / "ce" / "seed_x").mkdir()  # not a fit
    assert [f[:3] for f in layout.fits()] == [("augmented", "ce", 0), ("baseline", "ce", 2), ("baseline", "ce", 10),
                                             ("baseline", "focal", 1)]
    assert [f[:3] for f in layout.fits("baseline", "ce")] == [("baseline", "ce", 2), ("baseline", "ce", 10)]
    assert [f[3] for f in layout.fits(file="metrics.json")] == [layout.classifier("baseline", "ce", 2)]
