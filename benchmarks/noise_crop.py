"""The noise estimate on a central crop of a large frame: accuracy and time against the
crop size (``noise.NOISE_CROP_PX``), on simulated frames with known Poisson λ and
Gaussian μ.

    python benchmarks/noise_crop.py [--n 12] [--size 1536] [--crops 1024 512 256] \
        [--out docs/reports/noise_crop.md]
"""

from __future__ import annotations

import argparse
import platform
import time
from pathlib import Path

import numpy as np

import napari_tmd_defects.noise as N
from napari_tmd_defects.simulation import Noise, simulate


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=12, help="frames (λ 4-40, μ 0-25, 0.06-0.15 Å/px)")
    ap.add_argument("--size", type=int, default=1536)
    ap.add_argument("--crops", type=int, nargs="+", default=[1024, 512, 256])
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    rng = np.random.default_rng(5)
    res = {c: [] for c in args.crops}
    for k in range(args.n):
        lam, mu, ps = float(rng.uniform(4, 40)), float(rng.uniform(0, 25)), float(rng.uniform(0.06, 0.15))
        sim = simulate("MoTe2", args.size, pixel_size=ps, noise=Noise(lam, mu), seed=500 + k, defect_fraction=0.1)
        for c in args.crops:
            N.NOISE_CROP_PX = c
            N.estimate_noise(sim.image, 3.52 / ps)
            t0 = time.perf_counter()
            e = N.estimate_noise(sim.image, 3.52 / ps)
            res[c].append((e.poisson_lambda / lam, e.gaussian_mu - mu, time.perf_counter() - t0))
    lines = ["# Noise estimate: crop size", "",
             f"Command: `python benchmarks/noise_crop.py --n {args.n} --size {args.size} --crops "
             f"{' '.join(map(str, args.crops))}" + (f" --out {args.out}`" if args.out else "`"), "",
             f"{args.n} simulated MoTe2 frames of {args.size}² (λ 4–40 counts, μ 0–25, 0.06–0.15 Å/px, seeds "
             f"500+), each estimated on its central crop; {platform.machine()}, one process, "
             f"{time.strftime('%Y-%m-%d')}.", "",
             "| crop (px) | λ estimate / true, mean | sd | μ error, mean | sd | s per estimate (median) |",
             "|---:|---:|---:|---:|---:|---:|"]
    for c in args.crops:
        r = np.array(res[c])
        lines.append(f"| {c} | {r[:, 0].mean():.3f} | {r[:, 0].std():.3f} | {r[:, 1].mean():+.2f} | "
                     f"{r[:, 1].std():.2f} | {np.median(r[:, 2]):.3f} |")
    text = "\n".join(lines) + "\n"
    if args.out:
        args.out.write_text(text)
        print(f"wrote {args.out}")
    else:
        print(text)


if __name__ == "__main__":
    main()
