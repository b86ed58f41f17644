"""The ``tailfill`` command: ``tailfill run`` for everything, or one stage at a time."""
from __future__ import annotations

import logging
import sys
import time
from pathlib import Path

log = logging.getLogger("tailfill")


def _setup_logging(run_dir: Path | None, verbose: bool, rank: int = 0) -> None:
    handlers = [logging.StreamHandler(sys.stderr)]
    if rank != 0:  # other processes: warnings only, marked with their rank; the main process writes log.txt
        logging.basicConfig(level=logging.WARNING, handlers=handlers, force=True,
                            format=f"%(asctime)s [rank {rank}] %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
        return
    if run_dir is not None:
        run_dir.mkdir(parents=True, exist_ok=True)
        from .run import RunLayout

        handlers.append(logging.FileHandler(RunLayout(run_dir).log, encoding="utf-8"))
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, handlers=handlers, force=True,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    for noisy in ("PIL", "matplotlib", "accelerate", "diffusers", "timm", "urllib3", "httpx"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def _load(args):
    from .config import load_config

    cfg = load_config(args.config, args.set + ([f"report_to={args.report_to}"] if args.report_to else []))
    if args.run_dir:
        cfg.run_dir = args.run_dir
    return cfg


def describe_os_error(e: OSError) -> str:
    """One line for a failed file operation: what, where, and what to do (a full disk, no permission, ...)."""
    import errno

    where = " -> ".join(str(f) for f in (e.filename, e.filename2) if f) or "a file"
    hint = {errno.ENOSPC: "free some space (or point run_dir / data.cache_dir elsewhere) and resume with "
                          "`tailfill run --resume`; files already written are intact",
            errno.EACCES: "check the permissions, or choose another --run-dir",
            errno.EROFS: "the file system is read-only; choose another --run-dir",
            errno.EEXIST: "a file of that name is in the way; choose another --run-dir",
            errno.ENOTDIR: "a file stands where a directory is needed; choose another --run-dir"}.get(e.errno)
    return f"{e.strerror or e}: {where}" + (f"; {hint}" if hint else "")


def final_table(run) -> str:
    """The closing text of ``tailfill run``: results per model and per-class gains."""

    from .utils.io import read_json, read_table
    from .evaluation.tables import gains_table, summary_table

    summary = read_json(run.paths.summary)
    classes = run.data.classes
    text = [summary_table(summary, classes).to_string(index=False)]
    aug = [m for m in summary if m.startswith("augmented:")]
    if aug:
        results = read_table(run.paths.results)
        base = "baseline:" + aug[0].split(":", 1)[1]
        text += ["", f"per-class recall, {base} -> {aug[0]}:",
                 gains_table(results, base, aug[0], classes).to_string(index=False, float_format="%.3f")]
    return "\n".join(text)


def main(argv: list[str] | None = None) -> int:
    from .cli_parser import build_parser

    args = build_parser().parse_args(argv)

    try:
        return _dispatch(args)
    except KeyboardInterrupt:
        print("interrupted; resume with `tailfill run --resume --run-dir ...`", file=sys.stderr)
        return 130
    except Exception as e:  # one clear line for the user; --debug for the traceback
        from .run import RunDirError
        from .data import DataError, ImageError
        from .utils.training import TrainingDivergedError

        if args.debug or not isinstance(e, (RunDirError, DataError, ImageError, TrainingDivergedError, ValueError,
                                            OSError, RuntimeError)):
            raise
        print(f"tailfill: error: {describe_os_error(e) if isinstance(e, OSError) else e}", file=sys.stderr)
        return 2


def _dispatch(args) -> int:
    from .run import Run, RunLayout
    from .stages import STAGES, run_all, run_stage
    from .utils.training import configure_threads, process_info, resolve_device

    if args.command == "demo-data":
        from .data import make_demo_dataset

        path = make_demo_dataset(args.out, args.images, args.imbalance, args.size, args.seed)
        print(f"demo dataset written to {path}")
        return 0
    if args.command == "show-config":
        from .config import load_config

        print(load_config(args.config, args.set).to_yaml(comments=True), end="")
        return 0

    if args.command == "upgrade-config":
        from .config import upgrade_file

        text, moves = upgrade_file(args.file)
        print(text, end="")
        for old, new in moves:
            print(f"moved {old} -> {new}", file=sys.stderr)
        return 0
    if args.command == "compare":
        from .compare import compare
        from .sweep import SweepSpec

        spec = Path(args.spec)  # a sweep's directory is its own out, wherever it was moved
        print(compare(SweepSpec.load(spec / "sweep.yaml", args.out or str(spec)) if spec.is_dir()
                      else SweepSpec.load(spec, args.out)))
        return 0
    configure_threads(lambda line: print(line, file=sys.stderr))  # a busy machine: fewer threads, not spinning ones
    if args.command == "sweep":
        return _sweep(args)
    if args.command == "run":
        cfg = _load(args)
        if args.device:
            cfg.device = args.device
        run = Run(cfg)
        proc = process_info()
        if proc.is_main:  # only the main process creates or checks the run directory; the others wait for it
            run.initialise(resume=args.resume, overwrite=args.overwrite)
        proc.barrier()
        _setup_logging(run.dir, args.verbose, proc.rank)
        stages = args.stages.split(",") if args.stages else STAGES
        unknown = [s for s in stages if s not in STAGES]
        if unknown:
            raise ValueError(f"unknown stage(s) {', '.join(unknown)}; known: {', '.join(STAGES)}")
        t0 = time.time()
        if cfg.data.folds and cfg.data.fold is None:
            from .crossval import run_folds

            run_folds(run, stages)
            summary = run.paths.root / "results" / "cv_summary.json"
            if process_info().is_main and summary.is_file():
                from .utils.io import read_json
                from .evaluation.tables import summary_table

                print(summary_table(read_json(summary), [k[7:] for k in read_json(summary)[next(iter(
                    read_json(summary)))] if k.startswith("recall_")]).to_string(index=False))
                print(f"\ncross-validation finished in {time.time() - t0:.0f} s; report: "
                      f"{run.paths.report_dir / 'report.md'}")
            return 0
        run_all(run, stages)
        if process_info().is_main and run.is_done("evaluate"):
            print(final_table(run))
            print(f"\nrun finished in {time.time() - t0:.0f} s; report: {run.paths.report_dir / 'report.md'}")
        return 0

    if args.command == "predict":
        return _predict(args)

    # a single stage: an existing run directory, or a new one for `prepare`
    run_dir = Path(args.run_dir) if args.run_dir else None
    if run_dir is not None and RunLayout(run_dir).config.is_file() and not args.config and not args.set:
        run = Run.open(run_dir)
    elif args.command == "prepare":
        run = Run(_load(args))
        if process_info().is_main:
            run.initialise(resume=True)
        process_info().barrier()
    else:
        if run_dir is None:
            raise ValueError(f"`tailfill {args.command}` needs --run-dir of a run started with `tailfill prepare`")
        run = Run.open(run_dir)
    if args.device:
        run.cfg.device = args.device
        run.device = resolve_device(args.device)
    _setup_logging(run.dir, args.verbose, process_info().rank)
    if args.command == "evaluate" and (args.data_root or args.data_csv):
        from .cli_parser import external_kinds
        from .predict import evaluate_external

        name = args.name or Path(args.data_root or args.data_csv).resolve().name
        kind = args.data_kind or (run.cfg.data.kind if run.cfg.data.kind in external_kinds() else "isic2019")
        out = evaluate_external(run, name, kind, args.data_root, args.data_csv, args.model)
        print(f"external evaluation written to {out}")
        return 0
    run_stage(run, args.command, force=args.force)
    if args.command == "report":
        print(final_table(run))
    return 0


def _sweep(args) -> int:
    from .stages import STAGES
    from .sweep import SweepSpec, run_sweep

    spec = SweepSpec.load(args.spec, args.out, args.set)
    names = list(spec.variants)
    if args.list:
        print("\n".join(f"{i}\t{n}" for i, n in enumerate(names)))
        return 0
    if args.index is not None and not 0 <= args.index < len(names):
        raise ValueError(f"--index {args.index}: this sweep has variants 0 to {len(names) - 1}")
    if args.archive:
        from .sweep import archive

        files = archive(spec, Path(args.archive))
        print(f"archived {len(files)} files ({sum(f.stat().st_size for f in files) / 1e6:.1f} MB) to {args.archive}")
        return 0
    stages = args.stages.split(",") if args.stages else None
    unknown = [s for s in stages or [] if s not in STAGES]
    if unknown:
        raise ValueError(f"unknown stage(s) {', '.join(unknown)}; known: {', '.join(STAGES)}")
    spec.out.mkdir(parents=True, exist_ok=True)
    _setup_logging(spec.out, args.verbose)
    only = [names[args.index]] if args.index is not None else args.variant
    store = run_sweep(spec, only, stages, args.fold)
    print(f"sweep {spec.out}: {len(store.computed)} stage outputs computed, {len(store.shared)} reused")
    if not args.no_compare and only is None and args.fold is None:
        from .compare import compare

        print(compare(spec))
    return 0


def _predict(args) -> int:
    from .data.sources import ISIC2019_GT
    from .predict import images_from_csv, images_in, predict_files
    from .run import Run
    from .utils.training import resolve_device

    run = Run.open(args.run_dir)
    if args.device:
        run.device = resolve_device(args.device)
    _setup_logging(None, args.verbose)
    if args.images:
        frame = images_in(args.images)
    elif args.csv:
        frame = images_from_csv(args.csv, args.root)
    elif (Path(args.data_root) / ISIC2019_GT).is_file():
        from .data import load_isic2019

        dataset = load_isic2019(args.data_root, run.cfg.data.on_bad_image)
        frame = dataset.frame.assign(path=[str(p) for p in dataset.paths()])[["image", "path"]]
    else:
        frame = images_in(Path(args.data_root) / "ISIC_2019_Test_Input")
    submission = predict_files(run, frame, args.out, args.model, args.ensemble, args.seed)
    print(f"{len(submission)} predictions written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
