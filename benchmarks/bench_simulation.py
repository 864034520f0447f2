"""Time the fast (incoherent) simulator; writes a Markdown table.

    python benchmarks/bench_simulation.py [--out benchmarks/results/simulation.md]

Times one image per setting, single process, after one warm-up call per setting
(probe tables are cached per optics). Threads are limited to one.
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

import numpy as np  # noqa: E402

from napari_tmd_defects.datasets import sample_conditions  # noqa: E402
from napari_tmd_defects.simulation import simulate  # noqa: E402

CASES = [
    ("512² at 0.12 Å/px, paper preset", 512, 0.12, "paper"),
    ("512² at 0.09 Å/px, paper preset", 512, 0.09, "paper"),
    ("512² at 0.12 Å/px, realistic preset", 512, 0.12, "realistic"),
    ("1024² at 0.08 Å/px, paper preset", 1024, 0.08, "paper"),
    ("2048² at 0.03 Å/px, paper preset", 2048, 0.03, "paper"),
]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "simulation.md")
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    rows = []
    for label, size, ps, preset in CASES:
        times = []
        for k in range(args.repeats + 1):
            kw = sample_conditions(preset, np.random.default_rng(k), (size, size), pixel_size=ps)
            t0 = time.perf_counter()
            sim = simulate("MoTe2", size, seed=k, **kw)
            dt = time.perf_counter() - t0
            if k or preset == "realistic":  # first paper call warms the probe cache
                times.append(dt)
        rows.append((label, np.median(times), np.max(times), sim.truth.n_cells))
        print(f"{label}: median {np.median(times):.3f} s")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    lines = [
        "# Fast simulator timing",
        "",
        f"Command: `python benchmarks/bench_simulation.py` · {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} logical CPUs, one thread, Python {platform.python_version()}, numpy {np.__version__}.",
        "",
        "| image | median s / image | max s | unit cells |",
        "|---|---:|---:|---:|",
    ]
    lines += [f"| {lab} | {med:.3f} | {mx:.3f} | {n} |" for lab, med, mx, n in rows]
    lines += ["", "The realistic preset draws new optics for every image, so it includes the probe computation."]
    args.out.write_text("\n".join(lines) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
