"""Fit the classifier's softmax temperature on validation frames and write it into the
weights card, so that a cell's confidence is the probability that its class is right.

    python benchmarks/calibrate_confidence.py [--n 8] [--weights PATH] [--dry-run]

Validation frames are simulated here with their own seeds (none is in a training or a
held-out evaluation set): the ``paper`` and ``realistic`` presets in MoTe2 and the
``realistic`` preset in MoS2, MoSe2, WS2 and WSe2. Every frame is analysed end to end with
the temperature set to 1; cells matched to the truth by their X and M sites (off the
boundaries, classes not changed by the column reading, chalcogen state resolved) give
``(probabilities, true class)`` pairs, and :func:`~napari_tmd_defects.classification.fit_temperature`
minimises their negative log-likelihood. The expected calibration error on the held-out
sets is in the evaluation reports (``docs/reports/pipeline/``).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

from napari_tmd_defects import analyze
from napari_tmd_defects.classification import fit_temperature, load_classifier
from napari_tmd_defects.datasets import sample_conditions
from napari_tmd_defects.evaluation import _site_states, match_sites
from napari_tmd_defects.runtime import default_weights, load_weights, save_weights
from napari_tmd_defects.simulation import simulate

SETS = [("MoTe2", "paper"), ("MoTe2", "realistic"), ("MoS2", "realistic"), ("MoSe2", "realistic"),
        ("WS2", "realistic"), ("WSe2", "realistic")]


def _pairs(res, truth) -> tuple[np.ndarray, np.ndarray]:
    tx, tm = _site_states(truth.cell_label)
    on_x = match_sites(res.x_sites, truth.cell_x_site, truth.a_px)
    on_m = match_sites(res.m_sites, truth.cell_m_site, truth.a_px)
    ok = (on_x >= 0) & (on_m >= 0) & (res.labels >= 0) & ~res.x_unresolved
    ok &= ~truth.cell_boundary[np.maximum(on_x, 0)]
    probs = res.probabilities
    # cells whose class the column reading set carry the reading's confidence, not the network's
    ok &= np.isclose(res.confidence, probs[np.arange(len(probs)), np.maximum(res.labels, 0)])
    y = tx[on_x[ok]] + 3 * tm[on_m[ok]].astype(int)
    return probs[ok], y


def _ece(conf, right, bins=10) -> float:
    b = np.clip((conf * bins).astype(int), 0, bins - 1)
    return float(sum(abs(right[b == k].mean() - conf[b == k].mean()) * np.sum(b == k)
                     for k in range(bins) if np.any(b == k)) / len(conf))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=8, help="frames per (material, preset)")
    ap.add_argument("--size", type=int, default=384)
    ap.add_argument("--weights", default=None, help="classifier weights to calibrate (default: the shipped ones)")
    ap.add_argument("--extra-sets", nargs="*", default=[], metavar="MATERIAL:PRESET",
                    help="validation sets besides the six above (e.g. MoTe2:hard)")
    ap.add_argument("--dry-run", action="store_true", help="fit and report, do not write the card")
    args = ap.parse_args()
    sets = SETS + [tuple(s.split(":", 1)) for s in args.extra_sets]

    path = Path(args.weights) if args.weights else default_weights("classifier")
    clf = load_classifier(path, device="cpu")
    clf.temperature = 1.0
    P, Y = [], []
    t0 = time.perf_counter()
    for i, (mat, preset) in enumerate(sets):
        rng = np.random.default_rng(70_000 + i)
        for k in range(args.n):
            kw = sample_conditions(preset, rng, (args.size, args.size), pixel_size=(0.06, 0.15), rotation="random",
                                   defect_fraction=(0.1, 0.3))
            sim = simulate(mat, args.size, seed=71_000 + 100 * i + k, **kw)
            res = analyze(sim.image, kw["pixel_size"], mat, classifier=clf)
            p, y = _pairs(res, sim.truth)
            P.append(p)
            Y.append(y)
        print(f"{mat} {preset}: {sum(len(y) for y in Y)} cells so far", flush=True)
    P, Y = np.concatenate(P), np.concatenate(Y)
    t = fit_temperature(P, Y)
    conf1, right1 = P.max(1), P.argmax(1) == Y
    z = np.log(np.clip(P, 1e-12, 1)) / t
    pt = np.exp(z - z.max(1, keepdims=True))
    pt /= pt.sum(1, keepdims=True)
    print(f"{len(Y)} validation cells; temperature {t:.3f}; ECE {_ece(conf1, right1):.4f} -> "
          f"{_ece(pt.max(1), pt.argmax(1) == Y):.4f} ({time.perf_counter() - t0:.0f} s)")
    if args.dry_run:
        return
    sd, card = load_weights(path)
    card["calibration"] = {
        "temperature": round(t, 4),
        "method": "temperature scaling of the logits, NLL on validation cells",
        "command": "python benchmarks/calibrate_confidence.py " + " ".join(sys.argv[1:]),
        "n_cells": int(len(Y)),
        "validation": [f"{m} {p}" for m, p in sets],
        "frames_per_set": args.n,
        "ece_before": round(_ece(conf1, right1), 4),
        "ece_after": round(_ece(pt.max(1), pt.argmax(1) == Y), 4),
    }
    save_weights(path, sd, card, half=True)
    print(f"wrote the temperature into {path.name}")


if __name__ == "__main__":
    main()
