"""Time CNN-1 detection + hexagonal-net casting; writes a Markdown table.

    python benchmarks/bench_detection.py [--weights W] [--out benchmarks/results/detection_speed.md] \
        [--repeats 3] [--no-configs] [--no-single-thread]

Every case runs in a fresh subprocess with 2 (and again with 1) torch threads: one warm-up call, then the
median of ``--repeats`` timed calls of ``detect`` + ``cells_from_hexagons`` (image
simulation not timed); peak resident memory is that subprocess's
``resource.getrusage(RUSAGE_SELF).ru_maxrss`` (Python and torch alone take ~0.6 GB of
it). It also times one 512² tile of the slim
and paper configurations (inference) and their training steps (batch 2, 1 thread).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

CASES = [
    ("2048² at 0.03 Å/px (the paper's frames)", 2048, 0.03),
    ("1024² at 0.08 Å/px", 1024, 0.08),
    ("512² at 0.09 Å/px (built-in sample)", 512, 0.09),
]


def _case(size: int, pixel_size: float, weights: str | None, repeats: int, threads: int = 2) -> dict:
    import resource

    import numpy as np
    import torch

    torch.set_num_threads(threads)
    from napari_tmd_defects.datasets import sample_conditions
    from napari_tmd_defects.detection import load_detector
    from napari_tmd_defects.geometry import cells_from_hexagons, match_boxes
    from napari_tmd_defects.simulation import simulate

    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    kw = sample_conditions("paper", np.random.default_rng(7), (size, size), pixel_size=pixel_size)
    sim = simulate("MoTe2", size, seed=7, **kw)
    t = sim.truth
    det = load_detector(weights, device="cpu")
    times, t_det = [], []
    for k in range(repeats + 1):
        t0 = time.perf_counter()
        boxes, scores = det.detect(sim.image, pixel_size)
        t1 = time.perf_counter()
        cells = cells_from_hexagons(boxes, scores, sim.image.shape, t.a_px, image=sim.image)
        t2 = time.perf_counter()
        if k:
            times.append(t2 - t0)
            t_det.append(t1 - t0)
    m = match_boxes(cells.boxes, t.cell_box, 0.5)
    return {
        "seconds": float(np.median(times)),
        "seconds_max": float(np.max(times)),
        "seconds_detect": float(np.median(t_det)),
        "cells": int(len(cells)),
        "truth_cells": int(t.n_cells),
        "recall": float((m["truth_match"] >= 0).mean()),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,
        "import_rss_mb": rss0 / 1024.0,
    }


def _configs(repeats: int) -> dict:
    import numpy as np
    import torch

    from napari_tmd_defects.detection import _predict, build_detector, count_parameters

    out = {}
    for name in ("slim", "paper"):
        torch.manual_seed(0)
        model = build_detector(name)
        row = {"parameters": count_parameters(model)["total"]}
        torch.set_num_threads(2)
        model.eval()
        img = np.random.default_rng(0).uniform(0, 1, (512, 512)).astype(np.float32)
        ts = []
        for k in range(repeats + 1):
            t0 = time.perf_counter()
            _predict(model, img, "cpu")
            if k:
                ts.append(time.perf_counter() - t0)
        row["infer_512_s"] = float(np.median(ts))
        torch.set_num_threads(1)
        model.train()
        opt = torch.optim.Adam(model.parameters(), 1e-4)
        for crop in (320, 512):
            b = []
            for y in range(8, crop - 60, 25):
                for x in range(6 + (y // 25 % 2) * 15, crop - 50, 29):
                    b.append([x, y, x + 42, y + 51])
            tgt = {"boxes": torch.tensor(b, dtype=torch.float32), "labels": torch.ones(len(b), dtype=torch.int64)}
            imgs = [torch.rand(1, crop, crop) for _ in range(2)]
            ts = []
            for k in range(3):
                t0 = time.perf_counter()
                loss = sum(model(imgs, [tgt, tgt]).values())
                opt.zero_grad()
                loss.backward()
                opt.step()
                if k:
                    ts.append(time.perf_counter() - t0)
            row[f"train_step_{crop}_s"] = float(np.median(ts))
        out[name] = row
    return out


def _sub(args: list[str]) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="2")
    res = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True, env=env, check=True)
    return json.loads(res.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "detection_speed.md")
    ap.add_argument("--weights", default=None, help="detector weights (default: the shipped ones)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--no-configs", action="store_true",
                    help="skip the slim/paper configuration table (untrained models, training steps)")
    ap.add_argument("--no-single-thread", action="store_true", help="skip the 1-thread runs")
    ap.add_argument("--_case", nargs=3, type=float, help=argparse.SUPPRESS)
    ap.add_argument("--_configs", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args._case:
        print(json.dumps(_case(int(args._case[0]), args._case[1], args.weights, args.repeats, int(args._case[2]))))
        return
    if args._configs:
        print(json.dumps(_configs(args.repeats)))
        return
    extra = ["--weights", args.weights] if args.weights else []
    load0 = os.getloadavg()
    rows = []
    for label, size, ps in CASES:
        r = _sub(["--_case", str(size), str(ps), "2", "--repeats", str(args.repeats), *extra])
        if not args.no_single_thread:
            r1 = _sub(["--_case", str(size), str(ps), "1", "--repeats", str(args.repeats), *extra])
            r["seconds_1thread"] = r1["seconds"]
        rows.append((label, r))
        print(label, r, flush=True)
    cfg = {} if args.no_configs else _sub(["--_configs", "--repeats", str(args.repeats)])
    print(cfg)
    load1 = os.getloadavg()
    import torch

    lines = [
        "# CNN-1 detection speed and memory",
        "",
        f"Command: `python benchmarks/bench_detection.py` · {_cpu()}, torch {torch.__version__}, "
        f"Python {platform.python_version()}. Detection + casting use 2 torch threads; training steps 1 thread.",
        f"The machine is shared: load average {load0[0]:.1f} before and {load1[0]:.1f} after the run "
        "(2 cores), so times are upper bounds.",
        "",
        "Detection (`HexagonDetector.detect`, shipped slim weights) + casting (`cells_from_hexagons` "
        "with the image, i.e. with column refinement), median of the timed runs, one process per case "
        "(paper-preset images):",
        "",
        "| image | detect + cast, s | of which detect, s | max s | 1 thread, s | cells found / true | peak RSS, MB |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for label, r in rows:
        lines.append(f"| {label} | {r['seconds']:.2f} | {r['seconds_detect']:.2f} | {r['seconds_max']:.2f} | "
                     f"{r.get('seconds_1thread', float('nan')):.2f} | {r['cells']} / {r['truth_cells']} | {r['peak_rss_mb']:.0f} |")
    lines += [
        "",
        f"(Python + torch + the package alone: {rows[0][1]['import_rss_mb']:.0f} MB.) With two threads on a "
        "machine whose other core is busy, torch's threads wait for each other and a call can take "
        "10 times longer; one thread is then the safer choice.",
    ]
    if cfg:
        lines += [
        "",
        "Configurations (untrained weights; inference on one 512² tile with 2 threads, training step = "
        "Adam update on 2 crops with ~90 / ~290 boxes, 1 thread):",
        "",
        "| config | parameters | inference 512², s | train step 320², s | train step 512², s |",
        "|---|---:|---:|---:|---:|",
        ]
    for name, r in cfg.items():
        lines.append(f"| {name} | {r['parameters'] / 1e6:.2f} M | {r['infer_512_s']:.2f} | "
                     f"{r['train_step_320_s']:.2f} | {r['train_step_512_s']:.2f} |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")
    print(f"wrote {args.out}")


def _cpu() -> str:
    from napari_tmd_defects.detection import _hardware

    return _hardware()


if __name__ == "__main__":
    main()
