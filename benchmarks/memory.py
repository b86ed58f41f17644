"""Peak memory of `prepare` + one classifier epoch on a large generated dataset: does it grow with the data?

Writes a demo dataset of ``--images`` images (ISIC 2019 layout, kept in ``--work`` between runs), then
times ``tailfill run --stages prepare,train-baseline`` at ``--size`` px with one epoch of one small
classifier, and reports the peak RSS of the whole process tree (``/usr/bin/time``'s maximum resident
set). ``--compare NAME=SRC`` also runs another tailfill source tree (e.g. an older checkout's ``src``)
on the same data, so before/after is measured on one machine in one sitting.

    git worktree add /tmp/tailfill-old 871963f
    python benchmarks/memory.py --images 25000 --size 128 --compare before=/tmp/tailfill-old/src
"""
from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]


def _rss_kb(pid: int) -> dict[str, int]:
    """The resident memory of one process by kind (kB): anonymous (its own arrays) and file-backed
    (pages of memory-mapped files it touched, which the kernel can drop and re-read)."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return {}
    return {k: int(v) for k, v in re.findall(r"^(VmRSS|RssAnon|RssFile):\s+(\d+)", text, re.M)}


def run_measured(cmd: list[str], env: dict, log: Path) -> dict:
    """Peak RSS (GB, ``/usr/bin/time``'s maximum resident set), its anonymous and file-backed parts as
    sampled every 0.2 s, and the wall seconds of ``cmd``; the samples go to ``log`` (time, kind, GB)."""
    t0 = time.time()
    with open(log.with_suffix(".stderr"), "w") as err:
        proc = subprocess.Popen(["/usr/bin/time", "-f", "PEAK_KB %M", *cmd], stdout=subprocess.DEVNULL, stderr=err,
                                env=env)
        peaks, samples = {"RssAnon": 0, "RssFile": 0}, []
        while proc.poll() is None:
            kids = Path(f"/proc/{proc.pid}/task/{proc.pid}/children")
            for pid in (kids.read_text().split() if kids.is_file() else []):
                rss = _rss_kb(int(pid))
                if rss:
                    samples.append((round(time.time() - t0, 1), rss.get("RssAnon", 0), rss.get("RssFile", 0)))
                    peaks = {k: max(peaks[k], rss.get(k, 0)) for k in peaks}
            time.sleep(0.2)
    stderr = log.with_suffix(".stderr").read_text()
    if proc.returncode:  # reported, not fatal: an old version may stop at a bug since fixed
        print(f"{' '.join(cmd)} failed:\n{stderr[-1500:]}", file=sys.stderr)
    pd.DataFrame(samples, columns=["s", "anon_kB", "file_kB"]).to_csv(log, index=False)
    kb = next(int(line.split()[1]) for line in stderr.splitlines() if line.startswith("PEAK_KB"))
    return {"peak RSS GB": round(kb / 1024 ** 2, 2), "peak anon GB": round(peaks["RssAnon"] / 1024 ** 2, 2),
            "peak file-backed GB": round(peaks["RssFile"] / 1024 ** 2, 2), "wall s": round(time.time() - t0)}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=25000)
    ap.add_argument("--size", type=int, default=128, help="the run's image size (data.image_size)")
    ap.add_argument("--backbone", default="mobilenetv3_small_050",
                    help="a small timm classifier: the point is the data's memory, not the model's")
    ap.add_argument("--compare", action="append", default=[], metavar="NAME=SRC",
                    help="another tailfill source folder to run the same command with")
    ap.add_argument("--work", type=Path, default=ROOT / "benchmarks" / "_work" / "memory")
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "performance" / "memory.md")
    args = ap.parse_args()
    data = args.work / f"demo_{args.images}"
    if not (data / "ISIC_2019_Training_GroundTruth.csv").is_file():
        t0 = time.time()
        subprocess.run([sys.executable, "-m", "tailfill", "demo-data", str(data), "--images", str(args.images),
                        "--size", str(args.size)], check=True)
        print(f"demo data: {args.images} images in {time.time() - t0:.0f} s", flush=True)
    rows = []
    for name, src in [("this tree", str(ROOT / "src"))] + [c.split("=", 1) for c in args.compare]:
        run_dir = args.work / f"run_{name.replace(' ', '_')}"
        cmd = [sys.executable, "-m", "tailfill", "run", "--run-dir", str(run_dir), "--overwrite",
               "--stages", "prepare,train-baseline", "--device", "cpu",
               "--set", "data.kind=isic2019", "--set", f"data.root={data}", "--set", f"data.image_size={args.size}",
               "--set", f"data.cache_dir={run_dir}_cache", "--set", "classifier.epochs=1",
               "--set", "classifier.methods=[ce]", "--set", "classifier.seeds=[0]",
               "--set", f"classifier.backbone={args.backbone}"]
        subprocess.run(["rm", "-rf", f"{run_dir}_cache"], check=True)  # every tree decodes the images itself
        env = {**os.environ, "PYTHONPATH": src}
        rows.append({"tailfill": name, "source": src, **run_measured(cmd, env, args.work / f"rss_{name.replace(' ', '_')}.csv")})
        rows[-1]["stages finished"] = ",".join(s for s in ("prepare", "train-baseline")
                                               if list((run_dir / "stages").glob(f"{s}*")))
        print(rows[-1], flush=True)
    table = pd.DataFrame(rows)
    base = table["peak RSS GB"].iloc[0]
    table["peak RSS / this tree"] = (table["peak RSS GB"] / base).round(2)
    from tailfill.evaluation.tables import to_markdown

    text = (f"Produced by `python benchmarks/memory.py {' '.join(sys.argv[1:])}` on {time.strftime('%Y-%m-%d')}: "
            f"`tailfill run --stages prepare,train-baseline` on {args.images} generated images at {args.size} px, "
            f"one epoch of {args.backbone}; peak RSS of the process tree.\n\n" + to_markdown(table) + "\n")
    print("\n" + text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)


if __name__ == "__main__":
    main()
