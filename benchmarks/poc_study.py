"""Proportion of confidence (POC) of V_X1 vs V_X2: 2DIP-Net (ours) vs the FCN baseline.

    python benchmarks/poc_study.py --data DATA [DATA ...] [--out docs/reports/poc.md]

The paper (Fig. 5d) reads, at a V_Te1 site, how much of the confidence goes to V_Te1
rather than V_Te2: 2DIP-Net 89.6/10.4 % and 87.2/12.8 %, FCN 40.6/59.4 % and
59.6/40.4 % (two sites of one experimental frame), and reports V_Te1 accuracies of
97.9 % (2DIP-Net) and 95.7 % (FCN) over 3034 cells. Here the same quantities come from
every true V_X1 (and V_X2) cell of held-out simulated datasets: for the networks, the
classifier's softmax p(V_X1) / (p(V_X1) + p(V_X2)); for the FCN, the same ratio of the
site-state probabilities built from its pixel classes (`fcn.analyze_fcn`). Cells are
matched to the ground truth by box centre (`evaluation.match_cells`).
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

import numpy as np


def _pocs(res, truth):
    """(true label, POC of class 1 vs 2, predicted label) for the matched cells."""
    from napari_tmd_defects.evaluation import match_cells

    pi, gi, _ = match_cells(res.boxes, truth.cell_box, truth.a_px)
    p = np.asarray(res.probabilities)[pi]
    poc = p[:, 1] / np.maximum(p[:, 1] + p[:, 2], 1e-12)
    return truth.cell_label[gi], poc, np.asarray(res.labels)[pi]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", nargs="+", type=Path, required=True, help="datasets written by `tmd-defects simulate`")
    ap.add_argument("--out", type=Path, default=Path("docs/reports/poc.md"))
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    from napari_tmd_defects.pipeline import analyze
    from napari_tmd_defects.classification import load_classifier
    from napari_tmd_defects.datasets import load_dataset
    from napari_tmd_defects.detection import load_detector
    from napari_tmd_defects.fcn import FCNSegmenter, analyze_fcn

    det, clf = load_detector(None, device="cpu"), load_classifier(None, device="cpu")
    seg = FCNSegmenter.load(device="cpu")
    methods = {
        "2DIP-Net (ours)": lambda img, t: analyze(img, t.pixel_size, t.material, detector=det, classifier=clf),
        "FCN baseline": lambda img, t: analyze_fcn(img, t.pixel_size, t.material, seg),
    }
    lines = [
        "# Proportion of confidence (POC): V_X1 vs V_X2",
        "",
        f"Command: `python benchmarks/poc_study.py --data {' '.join(d.name for d in args.data)}` · "
        f"{platform.machine()}, torch {torch.__version__}, {args.threads} threads, "
        f"{time.strftime('%Y-%m-%d')}.",
        "",
        (__doc__ or "").split("\n\n", 2)[2].strip(),
        "",
        "POC = p(V_X1) / (p(V_X1) + p(V_X2)) at a cell. For a true V_X1 cell it should be near 100 %, "
        "for a true V_X2 cell near 0 %. \"Confident\" = POC above 80 % (V_X1) or below 20 % (V_X2).",
        "",
        "| dataset | method | true V_X1 cells | mean POC at V_X1 | median | confident | V_X1 accuracy | V_X1 → Perfect "
        "| true V_X2 cells | mean POC at V_X2 | confident | V_X2 accuracy |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for data in args.data:
        items = load_dataset(data)
        acc = {name: ([], [], []) for name in methods}
        for k, item in enumerate(items):
            img, truth = item.load()
            for name, f in methods.items():
                t, poc, pred = _pocs(f(img, truth), truth)
                acc[name][0].append(t)
                acc[name][1].append(poc)
                acc[name][2].append(pred)
            print(f"\r{data.name}: {k + 1}/{len(items)}", end="", file=sys.stderr)
        print(file=sys.stderr)
        for name, (ts, ps, prs) in acc.items():
            t, poc, pred = np.concatenate(ts), np.concatenate(ps), np.concatenate(prs)
            one, two = t == 1, t == 2
            lines.append(
                f"| {data.name} | {name} | {one.sum()} | {100 * poc[one].mean():.1f} % | "
                f"{100 * np.median(poc[one]):.1f} % | {100 * np.mean(poc[one] > 0.8):.1f} % | "
                f"{100 * np.mean(pred[one] == 1):.1f} % | {int(np.sum(pred[one] == 0))} | {two.sum()} | "
                f"{100 * poc[two].mean():.1f} % | {100 * np.mean(poc[two] < 0.2):.1f} % | "
                f"{100 * np.mean(pred[two] == 2):.1f} % |"
            )
    lines += ["", "Paper (one experimental frame, two V_Te1 sites): 2DIP-Net POC 89.6 % and 87.2 %, "
              "FCN 40.6 % and 59.6 %; V_Te1 accuracy 97.9 % vs 95.7 %.", ""]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
