"""The CUDA path: a 2048² frame's time on the GPU, and its agreement with the CPU path.

    python benchmarks/bench_gpu.py --data DATA_DIR [--sets paper realistic ...] [--limit N]
        [--frame FRAME.npy] [--repeats 10] [--out docs/reports/gpu.md]

Needs a CUDA device. There the networks run in half precision (CNN-2's crops cut from the
frame on the GPU; CNN-1 in float32 unless ``--detector-half``); the lattice, site, noise,
vacuum and reading stages run on the CPU either way.

*Speed*: the 2048² MoTe2 frame at 0.1 Å/px of ``bench_scaling.py`` (seed 21, 16-bit
counts; ``--frame`` reads it from its cache, else it is simulated here), in the default
(ResNet-18 CNN-2, whole-frame CNN-1) and the fast configuration (``--classifier small
--hexagons sample``): two warm-up runs, then ``--repeats`` runs each timed on the wall
clock with the device synchronised before and after; the stage times of
``Result.timings``. The same frame on the CPU of the same host, at 2 threads and at all
cores. Two reference operations in the same process: ResNet-18, batch 16 at 224², on the
GPU in half precision and on the CPU at 2 threads (``bench_scaling.reference_op``, so CPU
figures compare with the scaling reports).

*Agreement*: every frame of each held-out set (``benchmarks/simulate_heldout.sh``) analysed
by both paths in the same process, the same weights: cells found by both (matched by box
centre within 0.3 a), the share of those with the same class and with the same site
states, and the scores of both against the truth (:func:`~.evaluation.score_result`).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import statistics
import sys
import time
import traceback
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from bench_scaling import CACHE_DIR, MATERIAL, STAGES, ensure_frame, hardware, reference_op  # noqa: E402

SETS = ("paper", "realistic", "ms_realistic", "hard", "vacuum", "mat_MoSe2", "mat_WSe2", "mat_MoS2", "mat_WS2",
        "structure", "structure_MoSe2", "structure_WSe2", "ms_structure", "ms_structure_WSe2", "ms_structure_MoS2",
        "ms_structure_MoSe2")
CONFIGS = {"default": {"classifier": None, "hexagons": "frame"},
           "fast": {"classifier": "small", "hexagons": "sample"}}
TARGET_GPU_S = 0.05  # s, 2048² at 0.1 Å/px
#: the accelerated path's device; ``--device cpu`` runs the script's every step on the CPU
#: (a dry run of the script itself, no figure of the GPU)
GPU = "cuda"


def gpu_reference(runs: int = 20) -> float:
    """Median seconds of a ResNet-18 forward (batch 16, 224², float16, channels-last) on the GPU."""
    import torch
    import torchvision

    torch.manual_seed(0)
    dt = torch.float16 if GPU == "cuda" else torch.float32
    net = torchvision.models.resnet18(weights=None).eval().to(GPU, dt).to(memory_format=torch.channels_last)
    x = torch.randn(16, 3, 224, 224, device=GPU, dtype=dt).contiguous(memory_format=torch.channels_last)
    out = []
    with torch.inference_mode():
        for _ in range(3):
            net(x)
        for _ in range(runs):
            out.append(_timed(lambda: net(x), True)[1])
    return statistics.median(out)


def _models(device: str, cfg: dict, detector_half: bool):
    from napari_tmd_defects.classification import load_classifier
    from napari_tmd_defects.detection import load_detector

    det = load_detector(None, device=device)
    if detector_half and device != "cpu":
        det.model.half()
    return det, load_classifier(cfg["classifier"], device=device)


def _timed(fn, sync: bool):
    """``(fn(), seconds)``; ``sync``: the GPU's queued work finished before and after."""
    import torch

    sync = sync and GPU == "cuda"
    if sync:
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    out = fn()
    if sync:
        torch.cuda.synchronize()
    return out, time.perf_counter() - t0


def speed(frame: np.ndarray, repeats: int, detector_half: bool) -> dict:
    """Wall time and stage times of each configuration on the GPU and on the CPU."""
    import torch

    from napari_tmd_defects.pipeline import analyze

    out = {"gpu_reference_s": gpu_reference(), "configs": {}}
    n_threads = os.cpu_count() or 1
    plan = [("gpu", GPU, n_threads, repeats), ("cpu", "cpu", 2, 2)] + (
        [("cpu", "cpu", n_threads, 3)] if n_threads > 2 else [])
    for name, cfg in CONFIGS.items():
        row = []
        for path, device, threads, n in plan:
            torch.set_num_threads(threads)
            det, clf = _models(device, cfg, detector_half)

            def run():
                return analyze(frame, 0.1, material=MATERIAL, device=device, detector=det, classifier=clf,
                               hexagons=cfg["hexagons"])

            for _ in range(2):
                run()
            runs = []
            for _ in range(n):
                res, wall = _timed(run, path == "gpu")
                runs.append({"wall_s": wall, "timings": dict(res.timings)})
            walls = [r["wall_s"] for r in runs]
            stages = {k: statistics.median(r["timings"].get(k, 0.0) for r in runs) for k in STAGES}
            row.append({"path": path, "device": device, "threads": threads, "median_s": statistics.median(walls),
                        "best_s": min(walls), "n_cells": int(res.n_cells), "stages": stages, "runs": runs})
            print(f"speed {name} {path} ({device}) x{threads}: {statistics.median(walls):.3f} s, "
                  f"{res.n_cells} cells", flush=True)
        out["configs"][name] = row
    torch.set_num_threads(2)
    out["cpu_reference_s"] = statistics.median(reference_op(5))
    torch.set_num_threads(n_threads)
    return out


def _compare(gpu, cpu) -> dict:
    """Cells of both results matched by box centre; classes and site states compared."""
    from napari_tmd_defects.evaluation import match_cells

    a = float(cpu.sites.a_px) if cpu.sites is not None and cpu.sites.a_px > 0 else 1.0
    pi, ci, _ = match_cells(gpu.boxes, cpu.boxes, a)
    same = int((gpu.labels[pi] == cpu.labels[ci]).sum())
    st = {"n_sites_gpu": 0, "n_sites_cpu": 0, "same_states": 0}
    if gpu.site_states is not None and cpu.site_states is not None:
        sg, sc = np.asarray(gpu.site_states.state), np.asarray(cpu.site_states.state)
        st = {"n_sites_gpu": len(sg), "n_sites_cpu": len(sc),
              "same_states": int((sg == sc).sum()) if len(sg) == len(sc) else -1}
    return {"n_gpu": int(gpu.n_cells), "n_cpu": int(cpu.n_cells), "matched": len(pi), "same_class": same,
            "max_prob_diff": float(np.abs(gpu.confidence[pi] - cpu.confidence[ci]).max()) if len(pi) else 0.0,
            **st}


def agreement(data: Path, sets, limit: int | None, detector_half: bool, out: dict, on_set=None) -> dict:
    """Per set and configuration (into ``out``): GPU vs CPU cells and classes, and both
    scored against the truth; ``on_set()`` after each set (e.g. to write what is done)."""
    from napari_tmd_defects.datasets import load_dataset
    from napari_tmd_defects.evaluation import CellScore, score_result
    from napari_tmd_defects.pipeline import analyze

    models = {(name, dev): _models(dev, cfg, detector_half) for name, cfg in CONFIGS.items() for dev in (GPU, "cpu")}
    for s in sets:
        if not (data / s / "dataset.json").exists():
            print(f"agreement: {s} missing, skipped", flush=True)
            continue
        items = load_dataset(data / s)[:limit] if limit else load_dataset(data / s)
        digest = hashlib.sha256()
        for name, cfg in CONFIGS.items():
            tot = {}
            score = {"gpu": CellScore(), "cpu": CellScore()}
            for item in items:
                image, truth = item.load()
                if name == "default":
                    digest.update(np.ascontiguousarray(image).tobytes())
                res = {}
                for path, dev in (("gpu", GPU), ("cpu", "cpu")):
                    det, clf = models[(name, dev)]
                    res[path] = analyze(image, truth.pixel_size, truth.material, device=dev, detector=det,
                                        classifier=clf, hexagons=cfg["hexagons"])
                    score[path].add(score_result(res[path], truth))
                for k, v in _compare(res["gpu"], res["cpu"]).items():
                    tot[k] = max(tot.get(k, 0.0), v) if k == "max_prob_diff" else tot.get(k, 0) + v
            tot["frames"], tot["digest"] = len(items), digest.hexdigest()[:16]
            for dev, sc in score.items():
                tot[f"{dev}_recall"], tot[f"{dev}_precision"] = sc.recall, sc.precision
                tot[f"{dev}_class_accuracy"] = sc.class_accuracy
            out[f"{s}/{name}"] = tot
            print(f"agreement {s} {name}: {tot}", flush=True)
        if on_set is not None:
            on_set()
    return out


def _pct(a: float, b: float) -> str:
    return f"{100.0 * a / b:.2f} %" if b else "–"


def report(info: dict, sp: dict | None, ag: dict | None, command: str) -> str:
    lines = ["# The CUDA path: speed and agreement with the CPU path", "",
             f"Command: `{command}`", "",
             f"Hardware: {info['gpu']}; host {info['host']}; "
             f"torch {info['torch']}, CUDA {info['cuda']}, Python {info['python']}.", ""]
    if sp:
        lines += ["## Speed: 2048² MoTe2 at 0.1 Å/px", "",
                  f"Reference ops in the same process: ResNet-18 batch 16 at 224² **{sp['gpu_reference_s'] * 1e3:.2f} ms** "
                  f"on the GPU (float16), **{sp['cpu_reference_s']:.3f} s** on the host CPU at 2 threads "
                  "(the scaling reports' reference).", "",
                  "| configuration | device | threads | cells | median s | best s | × GPU ref | "
                  + " | ".join(STAGES) + " |",
                  "| --- | --- | ---: | ---: | ---: | ---: | ---: | " + " | ".join("---:" for _ in STAGES) + " |"]
        for name, row in sp["configs"].items():
            for r in row:
                ratio = r["median_s"] / sp["gpu_reference_s"] if r["path"] == "gpu" else float("nan")
                lines.append(f"| {name} | {r['path']} ({r['device']}) | {r['threads']} | {r['n_cells']} | {r['median_s']:.3f} | "
                             f"{r['best_s']:.3f} | {'' if np.isnan(ratio) else f'{ratio:.0f}'} | "
                             + " | ".join(f"{r['stages'][k]:.3f}" for k in STAGES) + " |")
        best = min(r["best_s"] for row in sp["configs"].values() for r in row if r["path"] == "gpu")
        net = {name: sum(r["stages"][s] for s in ("detection", "classification"))
               for name, row in sp["configs"].items() for r in row if r["path"] == "gpu"}
        lines += ["", f"- Target ≤ {TARGET_GPU_S} s per 2048² frame on the GPU: "
                  f"**{'PASS' if best <= TARGET_GPU_S else 'FAIL'}** (best {best:.3f} s).",
                  "- The networks' stages on the GPU (detection + classification, median): "
                  + ", ".join(f"{k} {v:.3f} s" for k, v in net.items()) + "; the rest is CPU work "
                  "(lattice, sites, noise, vacuum, contrast, reading) that runs the same on either path.", ""]
    if ag:
        lines += ["## Agreement with the CPU path on the held-out sets", "",
                  "Cells matched by box centre (within 0.3 a). *same class*: of the matched cells; "
                  "*same states*: site states equal, of the sites (where both found the same sites). "
                  "Scores against the truth: recall / precision / class accuracy. *frames' digest*: "
                  "SHA-256 (first 16 hex digits) of the frames' pixels in order, to check they are "
                  "the sets the CPU reports were made on.", "",
                  "| set | configuration | frames | cells GPU | cells CPU | matched | same class | same states "
                  "| max Δ confidence | GPU scores | CPU scores | frames' digest |",
                  "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- | --- | --- |"]
        for key, t in ag.items():
            s, name = key.split("/")
            states = _pct(t["same_states"], t["n_sites_cpu"]) if t["same_states"] >= 0 else "sites differ"
            sc = {d: f"{100 * t[f'{d}_recall']:.2f} / {100 * t[f'{d}_precision']:.2f} / "
                     f"{100 * t[f'{d}_class_accuracy']:.2f}" for d in ("gpu", "cpu")}
            lines.append(f"| {s} | {name} | {t['frames']} | {t['n_gpu']} | {t['n_cpu']} | {t['matched']} | "
                         f"{_pct(t['same_class'], t['matched'])} | {states} | {t['max_prob_diff']:.4f} | "
                         f"{sc['gpu']} | {sc['cpu']} | `{t['digest']}` |")
        lines.append("")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path, default=None, help="folder of the held-out sets")
    ap.add_argument("--sets", nargs="+", default=list(SETS))
    ap.add_argument("--limit", type=int, default=None, help="frames per set (default: all)")
    ap.add_argument("--frame-cache", type=Path, default=None,
                    help="bench_scaling.py's frame cache (default: its default)")
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--detector-half", action="store_true", help="CNN-1 in float16 on the GPU too")
    ap.add_argument("--skip-speed", action="store_true")
    ap.add_argument("--device", default="cuda", help="the accelerated path (cuda; cpu: a dry run of this script)")
    ap.add_argument("--out", type=Path, default=HERE.parent / "docs" / "reports" / "gpu.md")
    args = ap.parse_args(argv)

    import torch

    global GPU
    GPU = args.device
    if GPU == "cuda" and not torch.cuda.is_available():
        print("bench_gpu.py needs a CUDA device; none is available here (--device cpu: a dry run)", file=sys.stderr)
        return 2
    info = {"gpu": torch.cuda.get_device_name(0) if GPU == "cuda" else f"none (a dry run on {GPU})",
            "host": hardware(), "torch": torch.__version__, "cuda": torch.version.cuda,
            "python": platform.python_version()}
    print(info, flush=True)
    command = "python benchmarks/bench_gpu.py " + " ".join(argv if argv is not None else sys.argv[1:])
    sp = ag = None
    js = args.out.with_suffix(".json")
    args.out.parent.mkdir(parents=True, exist_ok=True)

    def save():
        js.write_text(json.dumps({"info": info, "speed": sp, "agreement": ag}, indent=1, default=float))
        args.out.write_text(report(info, sp, ag, command))

    if not args.skip_speed:
        try:
            path, _ = ensure_frame(args.frame_cache or CACHE_DIR, 2048, 0.1, 21, "uint16", None)
            sp = speed(np.load(path), args.repeats, args.detector_half)
        except Exception:
            traceback.print_exc()
        save()
    if args.data is not None:
        try:
            ag = {}
            agreement(args.data, args.sets, args.limit, args.detector_half, ag, on_set=save)
        except Exception:
            traceback.print_exc()
        save()
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
