"""Batch throughput (frames/s) against workers, through the command line as users run it.

    python benchmarks/bench_scaleout.py [--frames 50] [--size 1024] [--pixel-size 0.1] \
        [--workers 1 2] [--paths cli dask] [--classifier small] [--hexagons sample] \
        [--out benchmarks/results/scaleout.md] [--quick]

``--frames`` simulated MoTe2 frames (10 % defects, a new seed each) are written once as
TIFFs with their pixel size (Å/px) in the metadata, into ``--cache-dir``. Each run is one
``tmd-defects analyze FOLDER --out OUT`` process, timed from start to exit (so it includes
starting Python, imports and loading the networks in every worker, as a user sees it):

* *cli*: ``--workers N`` (N = 1 analyses in the command's own process with torch's
  default threads; N > 1 uses N processes with one thread each);
* *dask*: ``--scheduler ADDRESS`` of a ``dask.distributed.LocalCluster`` the benchmark
  starts with N worker processes, one thread each (its start-up is timed separately and
  not counted).

Before each run and after the last, a fresh process times the reference op (ResNet-18,
batch 16 at 224², CPU, 2 threads; see ``bench_scaling.py``); throughput is also given in
frames per reference-op time, which a loaded machine changes much less than frames/s.
Every frame must come back ``ok`` in ``batch_summary.csv``. ``--classifier`` and
``--hexagons`` are passed to ``tmd-defects analyze`` (``small`` + ``sample``: the fast
configuration).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from bench_scaling import CACHE_DIR, hardware  # noqa: E402

QUICK = {"frames": 6, "size": 512, "ref_runs": 3}


def simulate_frames(folder: Path, n: int, size: int, ps: float) -> float:
    """Write ``n`` simulated TIFFs (seeds 1000 …) into ``folder`` unless there; returns seconds spent."""
    from napari_tmd_defects.io import write_tiff
    from napari_tmd_defects.simulation import simulate

    folder.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    for k in range(n):
        path = folder / f"frame_{k:03d}.tif"
        if not path.exists():
            sim = simulate("MoTe2", size, pixel_size=ps, defect_fraction=0.1, seed=1000 + k)
            tmp = path.with_suffix(".part.tif")
            write_tiff(tmp, sim.image, ps)
            tmp.replace(path)
    return time.perf_counter() - t0


def reference_s(runs: int) -> float:
    """Median seconds of the reference op, timed in a fresh process."""
    code = ("import json, sys; sys.path.insert(0, sys.argv[1]); from bench_scaling import reference_op; "
            "print('REF ' + json.dumps(reference_op(int(sys.argv[2]))))")
    out = subprocess.run([sys.executable, "-c", code, str(HERE), str(runs)], check=True,
                         capture_output=True, text=True).stdout
    return statistics.median(json.loads(next(ln for ln in out.splitlines() if ln.startswith("REF "))[4:]))


def _cli() -> list[str]:
    exe = Path(sys.executable).with_name("tmd-defects")
    if exe.exists():
        return [str(exe)]
    return [sys.executable, "-c", "import sys; from napari_tmd_defects.cli import main; sys.exit(main())"]


def run_cli(folder: Path, out: Path, extra: list[str], overlay: bool) -> tuple[float, int, int, str]:
    """Run ``tmd-defects analyze``; returns (wall s, frames ok, frames listed, error tail)."""
    if out.exists():
        shutil.rmtree(out)
    cmd = [*_cli(), "analyze", str(folder), "--out", str(out), "--device", "cpu", *extra]
    if not overlay:
        cmd.append("--no-overlay")
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, check=False, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    summary = out / "batch_summary.csv"
    n_ok = n_all = 0
    if summary.exists():
        with summary.open() as fh:
            for row in csv.DictReader(fh):
                n_all += 1
                n_ok += row["status"] == "ok"
    err = "" if proc.returncode == 0 else "\n".join(proc.stderr.strip().splitlines()[-5:])
    return wall, n_ok, n_all, err


def start_cluster(n: int):
    """A local dask cluster with ``n`` worker processes, one thread each; returns (cluster, start s)."""
    import logging

    from dask.distributed import Client, LocalCluster

    t0 = time.perf_counter()
    cluster = LocalCluster(n_workers=n, threads_per_worker=1, processes=True, dashboard_address=None,
                           silence_logs=logging.ERROR)
    with Client(cluster) as client:
        client.wait_for_workers(n)
    return cluster, time.perf_counter() - t0


def write_report(args, rows: list[dict], command: str, load_start: float, sim_s: float, done: bool) -> None:
    """The report of the settings run so far (written after each one: a run stopped early
    still leaves what it measured)."""
    import torch

    lines = [
        "# Batch throughput against workers",
        "",
        f"Command: `{command.strip()}`",
        "",
        (f"Hardware: {hardware()}. Torch {torch.__version__} (CPU), Python {platform.python_version()}"
         + (f", dask.distributed {__import__('distributed').__version__}" if "dask" in args.paths else "")
         + f". Date: {time.strftime('%Y-%m-%d %H:%M')}. Load average at the start {load_start:.2f}, "
         f"at the end {os.getloadavg()[0]:.2f}."),
        "",
        (f"{args.frames} simulated MoTe2 frames of {args.size}² at {args.pixel_size:g} Å/px (TIFF with the pixel "
         f"size; simulated in {sim_s:.0f} s, not counted), one `tmd-defects analyze FOLDER` run per setting "
         f"({'median of ' + str(args.repeats) if args.repeats > 1 else 'one run'}), timed from start to exit: "
         "Python start, imports and network loading in each worker included"
         f"{'' if args.no_overlay else ', overlay PNGs written'}. *cli* `--workers N` (N = 1: in the command's "
         "process, torch's default threads; N > 1: N processes, one thread each); *dask* `--scheduler` of a "
         "`LocalCluster(n_workers=N, threads_per_worker=1)` started beforehand (start-up not counted). "
         "*ref* is the reference op (ResNet-18, batch 16 at 224², CPU, 2 threads) timed in a fresh process "
         "before and after each run (mean of the two); *frames / ref* = frames/s × ref s, steadier than "
         "frames/s on a loaded machine."),
        "",
        ("| path | workers | frames ok | wall s | frames/s | speed-up | frames / ref | speed-up (ref units) "
        "| ref s | cluster start s |"),
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        base = next((b for b in rows if b["path"] == r["path"] and b["workers"] == min(args.workers)), r)
        fps, bfps = r["ok"] / r["wall_s"], base["ok"] / base["wall_s"]
        fref, bref = fps * r["ref_s"], bfps * base["ref_s"]
        status = f"{r['ok']}/{args.frames}" + (" (failed: see below)" if r["error"] else "")
        start = f"{r['cluster_start_s']:.1f}" if r["path"] == "dask" else "–"
        up = fps / bfps if bfps else float("nan")
        up_ref = fref / bref if bref else float("nan")
        lines.append(f"| {r['path']} | {r['workers']} | {status} | {r['wall_s']:.1f} | {fps:.3f} | {up:.2f}× | "
                     f"{fref:.3f} | {up_ref:.2f}× | {r['ref_s']:.3f} | {start} |")
    n_cpu = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    if not done:
        lines += ["", "**Incomplete**: the run stopped (or is still running) after the settings above."]
    lines += ["", (f"Speed-up is against {min(args.workers)} worker(s) of the same path. This machine has "
              f"{n_cpu} usable CPU(s): scale-out beyond {n_cpu} workers cannot show on it.")]
    for r in rows:
        if r["error"]:
            lines += ["", f"{r['path']} × {r['workers']} failed:", "", "```", r["error"], "```"]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--frames", type=int, default=50, help="number of frames (default 50)")
    ap.add_argument("--size", type=int, default=1024, help="frame size, px (default 1024)")
    ap.add_argument("--pixel-size", type=float, default=0.1, help="Å/px (default 0.1)")
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="worker counts (default 1 2)")
    ap.add_argument("--paths", nargs="+", choices=("cli", "dask"), default=["cli", "dask"],
                    help="cli: --workers N; dask: --scheduler of a LocalCluster (default both)")
    ap.add_argument("--repeats", type=int, default=1, help="runs per setting (median kept, default 1)")
    ap.add_argument("--ref-runs", type=int, default=5, help="reference-op runs per measurement (default 5)")
    ap.add_argument("--no-overlay", action="store_true", help="pass --no-overlay (default: overlays written)")
    ap.add_argument("--cache-dir", type=Path, default=CACHE_DIR,
                    help="the frames are kept here (default: in the temp folder)")
    ap.add_argument("--out", type=Path, default=None,
                    help="Markdown report (default benchmarks/results/scaleout.md; with --quick in the temp folder)")
    ap.add_argument("--quick", action="store_true", help="smoke run: 6 frames of 512²")
    ap.add_argument("--classifier", default=None, help="passed to tmd-defects analyze (e.g. small)")
    ap.add_argument("--hexagons", default=None, choices=["frame", "sample"], help="passed to tmd-defects analyze")
    if "--quick" in (sys.argv[1:] if argv is None else argv):
        ap.set_defaults(**QUICK)  # explicit flags still win
    args = ap.parse_args(argv)
    if args.out is None:
        args.out = Path(tempfile.gettempdir()) / "scaleout_quick.md" if args.quick else HERE / "results" / "scaleout.md"
    if "dask" in args.paths:
        try:
            import distributed  # noqa: F401
        except ImportError:
            ap.error("the dask path needs dask.distributed (pip install distributed), or pass --paths cli")

    command = "python benchmarks/bench_scaleout.py " + " ".join(sys.argv[1:] if argv is None else argv)
    load_start = os.getloadavg()[0]
    folder = args.cache_dir / f"scaleout_{args.frames}x{args.size}px_{args.pixel_size:g}A"
    sim_s = simulate_frames(folder, args.frames, args.size, args.pixel_size)
    print(f"{args.frames} frames of {args.size}² at {args.pixel_size:g} Å/px in {folder} ({sim_s:.1f} s to simulate)",
          flush=True)

    rows = []
    refs = [reference_s(args.ref_runs)]
    with tempfile.TemporaryDirectory() as tmp:
        for path in args.paths:
            for n in args.workers:
                cluster, start_s = (None, 0.0)
                if path == "dask":
                    cluster, start_s = start_cluster(n)
                    extra = ["--scheduler", cluster.scheduler_address]
                else:
                    extra = ["--workers", str(n)]
                extra += [a for k in ("classifier", "hexagons") if getattr(args, k) for a in (f"--{k}", getattr(args, k))]
                try:
                    runs = [run_cli(folder, Path(tmp) / f"{path}_{n}", extra, not args.no_overlay)
                            for _ in range(max(1, args.repeats))]
                finally:
                    if cluster is not None:
                        cluster.close()
                refs.append(reference_s(args.ref_runs))
                runs.sort(key=lambda r: r[0])
                wall, n_ok, n_all, err = runs[len(runs) // 2]
                ref = 0.5 * (refs[-2] + refs[-1])
                rows.append({"path": path, "workers": n, "wall_s": wall, "ok": n_ok, "listed": n_all,
                             "error": err, "ref_s": ref, "cluster_start_s": start_s})
                msg = f"  {err.splitlines()[-1]}" if err else ""
                print(f"{path} × {n}: {wall:.1f} s, {n_ok}/{args.frames} ok, {n_ok / wall:.3f} frames/s, "
                      f"ref {ref:.3f} s{msg}", flush=True)
                write_report(args, rows, command, load_start, sim_s, done=False)

    write_report(args, rows, command, load_start, sim_s, done=True)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
