"""The ``tailfill`` command line: its commands and flags (what each does is in :mod:`tailfill.cli`)."""
from __future__ import annotations

import argparse

from . import __version__


def external_kinds() -> list[str]:
    """The dataset kinds an external labelled set can be read as: every registered one but the drawn demo."""
    from .data.prepare import DATASETS

    return [k for k in DATASETS if k != "demo"]


def build_parser() -> argparse.ArgumentParser:
    """Every command and its flags, each with one line of help."""
    from .stages import STAGES

    parser = argparse.ArgumentParser(prog="tailfill", description="The ``tailfill`` command: ``tailfill run`` for "
                                     "everything, or one stage at a time.")
    parser.add_argument("--version", action="version", version=f"tailfill {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    def common(p, config=True):
        if config:
            p.add_argument("--config", help="YAML config (defaults: the embedded CPU demo)")
            p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                           help="override a config value, e.g. --set diffusion.train_steps=500 (repeatable)")
        p.add_argument("--run-dir", help="run directory (default: run_dir from the config)")
        p.add_argument("--device", choices=["auto", "cpu", "cuda"], help="override the config's device")
        p.add_argument("--report-to", choices=["tensorboard", "wandb"],
                       help="also send training curves to this tracker (through accelerate)")
        p.add_argument("-v", "--verbose", action="store_true")
        p.add_argument("--debug", action="store_true", help="show tracebacks")

    p = sub.add_parser("run", help="run every stage (the demo when no --config is given)")
    common(p)
    p.add_argument("--resume", action="store_true", help="continue an interrupted run in --run-dir")
    p.add_argument("--overwrite", action="store_true", help="delete --run-dir and start again")
    p.add_argument("--stages", help=f"comma-separated subset of: {','.join(STAGES)}")
    for stage in STAGES:
        p = sub.add_parser(stage, help=f"run only the {stage} stage in a run directory" + (
            "; with --data-root/--data-csv, score the run's classifiers on an external labelled set" if stage ==
            "evaluate" else ""))
        common(p)
        p.add_argument("--force", action="store_true", help="run it again even if it is marked done")
        if stage == "evaluate":
            p.add_argument("--data-kind", choices=external_kinds(),
                           help="layout of the external set (default: the run's own data.kind, or isic2019)")
            p.add_argument("--data-root", help="external set: its root (ISIC 2019 or HAM10000 layout, or an "
                                               "image folder root/<class>/...)")
            p.add_argument("--data-csv", help="external set: CSV with image,label (kind csv) or an ISIC ground truth")
            p.add_argument("--name", help="name of the external set (default: the folder's name)")
            p.add_argument("--model", action="append", help="augmented | baseline | METHOD | KIND:METHOD "
                                                            "(repeatable; default augmented and the best baseline)")
    p = sub.add_parser("predict", help="apply a finished run's classifier to new images; writes ISIC submission CSV")
    p.add_argument("--run-dir", required=True)
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--images", help="a folder of images (searched recursively; id = relative path)")
    where.add_argument("--csv", help="a CSV with an image column (paths relative to --root or the CSV's folder)")
    where.add_argument("--data-root", help="an ISIC 2019 root (training layout, or ISIC_2019_Test_Input/)")
    p.add_argument("--root", help="with --csv: the folder image paths are relative to")
    p.add_argument("--out", required=True, help="the submission CSV to write")
    p.add_argument("--model", default="augmented", help="augmented (default) | baseline | METHOD | KIND:METHOD")
    p.add_argument("--ensemble", action="store_true", help="average the probabilities of every seed")
    p.add_argument("--seed", type=int, help="use this seed's classifier (default: the first)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"])
    p.add_argument("-v", "--verbose", action="store_true")
    p.add_argument("--debug", action="store_true")
    p = sub.add_parser("demo-data", help="write the demo dataset (ISIC 2019 layout) to a folder")
    p.add_argument("out")
    p.add_argument("--images", type=int, default=1000)
    p.add_argument("--imbalance", type=float, default=4.0)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--debug", action="store_true")
    p = sub.add_parser("sweep", help="run a sweep spec: variants of one config, sharing identical stage outputs")
    p.add_argument("spec", help="the sweep spec (YAML: base, set, out, controls, variants)")
    pick = p.add_mutually_exclusive_group()
    pick.add_argument("--variant", action="append", help="run only this variant (repeatable)")
    pick.add_argument("--index", type=int, help="run only the variant at this index of --list (a job array's task id)")
    pick.add_argument("--list", action="store_true", help="print the variants, one per line with its index, and stop")
    p.add_argument("--fold", type=int, action="append",
                   help="run only this fold of a cross-validated base (repeatable; default every fold)")
    p.add_argument("--stages", help="comma-separated subset of the stages (default all)")
    p.add_argument("--out", help="the sweep's directory (default: the spec's out)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override the spec's base for every variant (repeatable; YAML values)")
    p.add_argument("--archive", metavar="DEST", help="copy every run's results (no weights, images or caches) to "
                   "DEST and stop: compare reads it, a sweep with --out DEST resumes from it")
    p.add_argument("--no-compare", action="store_true", help="do not write the comparison tables at the end")
    p.add_argument("-v", "--verbose", action="store_true")
    p.add_argument("--debug", action="store_true")
    p = sub.add_parser("compare", help="a sweep's tables (paired differences, recalls, pools) from its runs")
    p.add_argument("spec", help="the sweep spec, or the sweep's directory (its sweep.yaml)")
    p.add_argument("--out", help="the sweep's directory (default: the spec's out)")
    p.add_argument("--debug", action="store_true")
    p = sub.add_parser("show-config", help="print the full configuration (defaults + --config + --set) as YAML")
    p.add_argument("--config")
    p.add_argument("--set", action="append", default=[])
    p.add_argument("--debug", action="store_true")
    p = sub.add_parser("upgrade-config", help="print a config or sweep spec with moved keys at their new place")
    p.add_argument("file", help="a config YAML or a sweep spec (its set: and variants:)")
    p.add_argument("--debug", action="store_true")
    return parser
