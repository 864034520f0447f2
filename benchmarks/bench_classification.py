"""Time CNN-2 inference: classify 4,000 unit cells of one frame, crops included.

    python benchmarks/bench_classification.py [--threads 1 2] [--out benchmarks/results/classification_speed.md]

The frame is a simulated 2200² px MoTe2 image at 0.1 Å/px (cells ~33 px wide); the
first 4,000 ground-truth cells are classified. "Full predict" is
``CellClassifier.predict`` (per-image normalisation + roi_align crops + ResNet-18
forward + softmax). The other rows time the parts and the settings that matter:
channels-last memory format, ``torch.inference_mode`` vs ``no_grad`` vs autograd on,
batch size, input size. Untrained weights (speed does not depend on the values).
Median and minimum of ``--repeats`` runs after one warm-up, for each thread count. The
CPU may be shared: the 1-minute load average before each table is printed with it (with
other work running, 2 threads can be slower than 1).
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch

from napari_tmd_defects import classification as C
from napari_tmd_defects.simulation import Noise, Optics, simulate

N_CELLS = 4000
NOTE = ("With other processes busy on both cores (load average ≥ 2), torch's second worker thread waits on a shared core and 2 threads run slower than 1; read the 2-core target on an idle machine. channels-last and inference_mode matter little at 32² on this CPU (a few %); batching (≥ 512 cells per forward pass) matters most.")


def timeit(fn, repeats: int) -> tuple[float, float]:
    fn()
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return float(np.median(ts)), float(np.min(ts))


def forward(model, crops, batch: int, channels_last: bool, mode: str, bf16: bool = False):
    ctx = {"inference_mode": torch.inference_mode, "no_grad": torch.no_grad, "grad": nullcontext}[mode]
    with ctx(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        for i in range(0, len(crops), batch):
            xb = crops[i : i + batch]
            if channels_last:
                xb = xb.contiguous(memory_format=torch.channels_last)
            torch.softmax(model(xb), 1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "classification_speed.md")
    args = ap.parse_args()
    sim = simulate("MoTe2", 2200, pixel_size=0.1, defect_fraction=0.1, optics=Optics(source_fwhm_a=0.6),
                   noise=Noise(poisson_lambda=12.0, gaussian_mu=15.0), seed=0)
    img, t = sim.image, sim.truth
    boxes = t.cell_box[:N_CELLS]
    assert len(boxes) == N_CELLS, len(boxes)
    size, ch = C.DEFAULT_INPUT_SIZE, C.DEFAULT_CHANNELS
    tables = []
    for threads in args.threads:
        torch.set_num_threads(threads)
        load = os.getloadavg()[0]
        rows = []

        def add(label, fn, note=""):
            med, mn = timeit(fn, args.repeats)
            rows.append((label, med, mn, note))
            print(f"[{threads} threads] {label}: median {med:.3f} s, min {mn:.3f} s", flush=True)

        torch.manual_seed(0)
        clf = C.CellClassifier(C.build_classifier(ch, size), C.make_card(ch, size, "standard"), "cpu")
        add(f"**full predict, {size}², 2 channels (default settings, batch 512)**",
            lambda: clf.predict(img, boxes, t.pixel_size), "normalisation + crops + model")
        add("  normalize_image (2200² frame)", lambda: C.normalize_image(img, t.pixel_size))
        norm = C.normalize_image(img, t.pixel_size)
        add("  extract_crops (4000 cells, roi_align)", lambda: C.extract_crops(norm, boxes, size, ch))
        crops = torch.from_numpy(C.extract_crops(norm, boxes, size, ch))
        model = C.build_classifier(ch, size).eval()
        model_cl = C.build_classifier(ch, size).eval().to(memory_format=torch.channels_last)
        add("  model, channels-last + inference_mode, batch 512",
            lambda: forward(model_cl, crops, 512, True, "inference_mode"))
        add("  model, contiguous (NCHW) + inference_mode, batch 512",
            lambda: forward(model, crops, 512, False, "inference_mode"))
        add("  model, channels-last + no_grad, batch 512", lambda: forward(model_cl, crops, 512, True, "no_grad"))
        add("  model, channels-last, autograd on, batch 512", lambda: forward(model_cl, crops, 512, True, "grad"))
        add("  model, channels-last + inference_mode + bfloat16 autocast, batch 512",
            lambda: forward(model_cl, crops, 512, True, "inference_mode", bf16=True), "not used by predict")
        for b in (64, 4000):
            add(f"  model, channels-last + inference_mode, batch {b}",
                lambda b=b: forward(model_cl, crops, b, True, "inference_mode"))
        m = C.build_classifier(ch, 64).eval().to(memory_format=torch.channels_last)
        cr = torch.from_numpy(C.extract_crops(norm, boxes, 64, ch))
        add("  model at 64², channels-last + inference_mode", lambda: forward(m, cr, 512, True, "inference_mode"))
        if threads == args.threads[0]:
            m = C.build_classifier(ch, 224).eval().to(memory_format=torch.channels_last)
            cr = torch.from_numpy(C.extract_crops(norm, boxes[:100], 224, ch))
            med, mn = timeit(lambda: forward(m, cr, 100, True, "inference_mode"), 1)
            rows.append(("  model at 224², channels-last + inference_mode", med * 40, mn * 40,
                         "extrapolated from 100 cells"))
        tables.append((threads, load, rows))

    lines = [
        "# CNN-2 inference speed",
        "",
        f"Command: `python benchmarks/bench_classification.py --threads {' '.join(map(str, args.threads))} --repeats {args.repeats}` · "
        f"{platform.machine()}, {os.cpu_count()} logical CPUs (shared with other work), "
        f"torch {torch.__version__}, no GPU.",
        "",
        f"Classifying {N_CELLS} cells of a 2200² px frame (0.1 Å/px). Target: ≤ 2 s on 2 CPU cores.",
    ]
    for threads, load, rows in tables:
        lines += ["", f"## {threads} torch thread(s) — 1-min load average before: {load:.1f}", "",
                  "| what | median s | min s | note |", "|---|---:|---:|---|"]
        lines += [f"| {lab} | {med:.3f} | {mn:.3f} | {note} |" for lab, med, mn, note in rows]
    lines += ["", "Half precision is used on CUDA only (CPU float16 convolutions are not faster).", "",
              NOTE]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
