"""Fit the calibration of the column reading's confidence (the cells whose class the site
reading sets: alloys and dopants, a binary's cells the reading changed) and write it to
``src/napari_tmd_defects/data/reading_calibration.json`` (read by
:func:`napari_tmd_defects.pipeline.reading_confidence`), with a short report.

    python benchmarks/calibrate_reading.py [--n 4] [--size 384] [--out docs/reports/reading_calibration.md] \
        [--cache FILE.pkl] [--dry-run]

Validation frames are simulated here with their own seeds (``60_000 + 1000 i + 100 j + k``
for material ``i``, preset ``j``, frame ``k``: none is a test's, a training set's or a
held-out report's frame; ``site_states.py`` uses 90_000 and up), ``n`` per material and
preset (``paper``, ``realistic``, ``hard``), over alloys, dopants and binaries
(:data:`SETS`). Every frame is analysed end to end (``analyze``, the shipped networks, the
composition given as the material); the cells matched to the truth by their X and M sites
(interior, chalcogen state resolved) whose confidence is the reading's give the reading's
probabilities of the class's metal and chalcogen counts and whether the class is right,
and each frame its quality (:func:`~napari_tmd_defects.pipeline.reading_features`, from the
frame alone). The coefficients of the frame's temperature
(:func:`~napari_tmd_defects.pipeline.reading_temperature`) minimise the negative
log-likelihood of the cells' right/wrong outcomes. The report gives the expected
calibration error per validation set with the one fixed temperature (before), with the
fitted map (after) and with the map fitted without the set's material. ``--cache`` keeps
the analysed frames (a pickle, for this script only), so the fit can be rerun without them.
"""

from __future__ import annotations

import argparse
import json
import pickle
import platform
import time
from datetime import date
from pathlib import Path
from types import SimpleNamespace

import numpy as np
from scipy.optimize import minimize

from napari_tmd_defects import analyze
from napari_tmd_defects.datasets import sample_conditions
from napari_tmd_defects.evaluation import CALIBRATION_BINS, match_result_cells
from napari_tmd_defects.materials import N_CLASSES, parse_composition
from napari_tmd_defects.pipeline import (READING_CALIBRATION_PATH, READING_FEATURES, READING_TEMPERATURE,
                                         calibrated_reading, reading_features, reading_probabilities,
                                         reading_temperature)
from napari_tmd_defects.simulation import simulate

#: Validation materials: alloys (open and fixed, metal and chalcogen), dopants, binaries.
SETS = ["Mo0.7W0.3Te2", "Mo0.6W0.4Se2", "WS1.4Se0.6", "MoS1.2Se0.8", "MoS2:Re0.04", "WSe2:Cr0.03",
        "WSe2:V0.05", "MoSe2:Nb0.03", "WS2", "MoS2", "WS1.0Se1.0", "WS1.7Se0.3", "WS2:Re0.03", "MoS2:Nb0.03"]
PRESETS = ("paper", "realistic", "hard")
CLASS_WEIGHTS = (1, 1, 2, 1, 1)
PIPELINE = Path(__file__).resolve().parents[1] / "src" / "napari_tmd_defects" / "pipeline.py"


def _cells(res, truth) -> dict[str, np.ndarray]:
    """Per scored cell whose confidence is the reading's: the reading's probabilities of the
    class's metal and chalcogen counts, and whether the class is right (matched as
    :func:`~napari_tmd_defects.evaluation.score_result` matches them)."""
    n = int(res.n_cells)
    st = res.site_states
    empty = {"p_m": np.zeros(0), "p_x": np.zeros(0), "right": np.zeros(0, bool)}
    if not n or st is None or res.sites is None:
        return empty
    lab = np.asarray(res.labels)
    pi, gi, _, _, _, t_lab = match_result_cells(res, truth)
    ok = (lab[pi] >= 0) & truth.interior[gi] & ~np.asarray(res.x_unresolved, bool)[pi]
    if parse_composition(res.material).is_binary and res.probabilities is not None:
        # a binary: only the cells whose class the reading set (the others carry the network's)
        p_cls = res.probabilities[pi, np.clip(lab[pi], 0, N_CLASSES - 1)]
        ok &= ~np.isclose(res.confidence[pi], p_cls)
    pi, t_lab = pi[ok], t_lab[ok]
    p_m, p_x = reading_probabilities(st, res.sites.cells, lab)
    return {"p_m": p_m[pi], "p_x": p_x[pi], "right": t_lab == lab[pi]}


def collect(n: int, size: int, sets: list[str] | None = None) -> dict:
    """Simulate and analyse the validation frames: per frame its set, its site states and
    cells (what :func:`~napari_tmd_defects.pipeline.reading_features` reads) and its scored
    cells (:func:`_cells`)."""
    frames = []
    t0 = time.perf_counter()
    for i, formula in enumerate(SETS):
        if sets is not None and formula not in sets:
            continue
        for j, preset in enumerate(PRESETS):
            base = 60_000 + 1000 * i + 100 * j
            rng = np.random.default_rng(base + 99)
            for k in range(n):
                kw = sample_conditions(preset, rng, (size, size), pixel_size=(0.08, 0.12), rotation="random",
                                       defect_fraction=0.12)
                sim = simulate(formula, size, class_weights=CLASS_WEIGHTS, seed=base + k, **kw)
                res = analyze(sim.image, kw["pixel_size"], formula)
                if res.site_states is None or res.sites is None:
                    continue
                c = res.sites.cells
                frames.append({"set": f"{formula} {preset}", "states": res.site_states,
                               "cells": SimpleNamespace(x=c.x.copy(), m=c.m.copy(), boundary=c.boundary.copy()),
                               **_cells(res, sim.truth)})
            done = [f for f in frames if f["set"] == f"{formula} {preset}"]
            right = np.concatenate([f["right"] for f in done]) if done else np.zeros(0)
            print(f"{formula} {preset}: {len(right)} cells, {100 * right.mean() if len(right) else float('nan'):.1f} % right "
                  f"({time.perf_counter() - t0:.0f} s)", flush=True)
    return {"frames": frames, "n": n, "size": size}


def _arrays(frames: list[dict]) -> dict[str, np.ndarray]:
    """The cells of all frames, each with its frame's features and set."""
    feats = [reading_features(f["states"], f["cells"]) for f in frames]
    rep = [len(f["right"]) for f in frames]
    return {"p_m": np.concatenate([f["p_m"] for f in frames]), "p_x": np.concatenate([f["p_x"] for f in frames]),
            "right": np.concatenate([f["right"] for f in frames]).astype(float),
            "features": np.repeat(np.array(feats, float).reshape(-1, len(READING_FEATURES)), rep, axis=0),
            "set": np.repeat(np.array([f["set"] for f in frames]), rep)}


def _confidence(d: dict[str, np.ndarray], cal: dict | None) -> np.ndarray:
    """The reading's confidence of every cell under the calibration ``cal`` (None: the one
    fixed temperature)."""
    out = np.empty(len(d["right"]))
    keys, inv = np.unique(d["features"], axis=0, return_inverse=True)  # one frame's features at a time
    for u in range(len(keys)):
        sel = inv.ravel() == u
        out[sel] = calibrated_reading(d["p_m"][sel], d["p_x"][sel], reading_temperature(keys[u], cal))
    return out


def _ece(conf: np.ndarray, right: np.ndarray, bins: int = CALIBRATION_BINS) -> float:
    """As :attr:`~napari_tmd_defects.evaluation.CellScore.ece`."""
    if not len(conf):
        return float("nan")
    b = np.clip((conf * bins).astype(int), 0, bins - 1)
    return float(sum(abs(right[b == k].mean() - conf[b == k].mean()) * np.sum(b == k)
                     for k in range(bins) if np.any(b == k)) / len(conf))


#: L2 penalty on the feature coefficients: keeps the map smooth.
RIDGE = 1e-3


def fit(d: dict[str, np.ndarray]) -> dict:
    """Minimise the cells' negative log-likelihood (right or wrong) over the coefficients
    ``a`` of the frame's temperature ``exp(a · [1, features])``."""
    f = np.c_[np.ones(len(d["right"])), d["features"]]
    lp_m = np.log(np.clip(d["p_m"], 1e-12, 1 - 1e-12) / np.clip(1 - d["p_m"], 1e-12, 1))
    lp_x = np.log(np.clip(d["p_x"], 1e-12, 1 - 1e-12) / np.clip(1 - d["p_x"], 1e-12, 1))
    y = d["right"]

    def nll(a):
        t = np.exp(np.clip(f @ a, -3.0, 3.0))
        log_c = np.minimum(-np.logaddexp(0, -lp_m / t) - np.logaddexp(0, -lp_x / t), -1e-12)
        return -float(np.mean(y * log_c + (1 - y) * np.log(-np.expm1(log_c)))) + RIDGE * float(np.sum(a[1:] ** 2))

    r = minimize(nll, np.r_[np.log(READING_TEMPERATURE), np.zeros(len(READING_FEATURES))], method="L-BFGS-B")
    return {"features": list(READING_FEATURES), "temperature": [round(float(v), 5) for v in r.x],
            "nll": round(float(r.fun), 5)}


def _leave_one_material_out(d: dict[str, np.ndarray]) -> np.ndarray:
    """Every cell's confidence under the map fitted without its material's frames."""
    mats = np.array([s.rsplit(" ", 1)[0] for s in d["set"]])
    out = np.zeros(len(d["right"]))
    for m in np.unique(mats):
        out[mats == m] = _confidence({k: v[mats == m] for k, v in d.items()},
                                     fit({k: v[mats != m] for k, v in d.items()}))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=4, help="frames per material and preset")
    ap.add_argument("--size", type=int, default=384)
    ap.add_argument("--cache", default=None, help="pickle of the analysed frames: read if it exists, else written")
    ap.add_argument("--out", default="docs/reports/reading_calibration.md")
    ap.add_argument("--dry-run", action="store_true", help="fit and report, do not write the constants")
    args = ap.parse_args()
    if args.cache and Path(args.cache).exists():
        data = pickle.loads(Path(args.cache).read_bytes())
    else:
        data = collect(args.n, args.size)
        if args.cache:
            Path(args.cache).write_bytes(pickle.dumps(data))
    d = _arrays(data["frames"])
    cal = fit(d)
    before, after, lomo = _confidence(d, None), _confidence(d, cal), _leave_one_material_out(d)
    names = list(dict.fromkeys(d["set"].tolist()))
    rows = []
    for name in names + ["all"]:
        sel = d["set"] == name if name != "all" else np.ones(len(d["right"]), bool)
        rows.append((name, int(sel.sum()), float(d["right"][sel].mean()) if sel.any() else float("nan"),
                     float(before[sel].mean()) if sel.any() else float("nan"),
                     float(after[sel].mean()) if sel.any() else float("nan"),
                     _ece(before[sel], d["right"][sel]), _ece(after[sel], d["right"][sel]),
                     _ece(lomo[sel], d["right"][sel])))
        print(f"{name}: {rows[-1][1]} cells, right {rows[-1][2]:.4f}, mean confidence {rows[-1][3]:.4f} -> "
              f"{rows[-1][4]:.4f}, ECE {rows[-1][5]:.4f} -> {rows[-1][6]:.4f} (material left out {rows[-1][7]:.4f})",
              flush=True)
    print("calibration:", cal)
    command = f"python benchmarks/calibrate_reading.py --n {data['n']} --size {data['size']}"
    cal.update({"generated_by": "benchmarks/calibrate_reading.py", "command": command,
                "validation": [f"{s} {p}" for s in SETS for p in PRESETS], "frames_per_set": data["n"],
                "frame_size": data["size"], "seeds": "60000 + 1000 i + 100 j + k (material i, preset j, frame k)",
                "n_frames": len(data["frames"]), "n_cells": int(len(d["right"])),
                "ece_before": round(rows[-1][5], 4), "ece_after": round(rows[-1][6], 4),
                "ece_after_max_set": round(max(r[6] for r in rows[:-1]), 4),
                "ece_material_left_out_max_set": round(max(r[7] for r in rows[:-1]), 4)})
    if not args.dry_run:
        READING_CALIBRATION_PATH.write_text(json.dumps(cal, indent=1) + "\n")
        print(f"wrote {READING_CALIBRATION_PATH.name}")
    _report(args, cal, rows)


def _report(args, cal: dict, rows: list[tuple]) -> None:
    a = cal["temperature"]
    lines = ["# Calibration of the column reading's confidence", "",
             f"Command: `{cal['command']}` · {platform.machine()}, Python {platform.python_version()}, "
             f"{date.today().isoformat()}.", "",
             "Where the column reading sets a cell's class (alloys and dopants; a binary's cells the reading "
             "changed), its confidence is `t(p_M) · t(p_X)`: the reading's probabilities of the class's metal and "
             "chalcogen counts, their log-odds divided by the frame's temperature `T = exp(a · [1, q])`. The "
             "frame's quality `q` is read from the frame alone (`pipeline.reading_features`): the step from an "
             "empty column to a full one in host-column noise σ per sublattice (log), the share of chalcogen "
             "columns read at less than 0.99, and whether the frame showed enough empty chalcogen columns to fit "
             "their level (else it is taken as 0 and a blurred frame's raised empty columns read as full). "
             "Fitted by the negative log-likelihood of the cells' right/wrong outcomes on "
             f"{cal['n_frames']} validation frames ({cal['frame_size']}², {cal['frames_per_set']} per material "
             f"and preset, seeds {cal['seeds']}; none is a held-out report frame), {cal['n_cells']} cells "
             "(matched to the truth, interior, chalcogen state resolved, confidence the reading's). Written to "
             "`src/napari_tmd_defects/data/reading_calibration.json`.", "",
             "| | 1 | " + " | ".join(f"`{f}`" for f in READING_FEATURES) + " |",
             "|---|" + "---:|" * (len(READING_FEATURES) + 1),
             "| a | " + " | ".join(f"{v:.3f}" for v in a) + " |", "",
             f"Expected calibration error on the validation frames (10 bins). Before: one temperature "
             f"({READING_TEMPERATURE}) for every frame; after: the fitted map; material left out: each material's "
             "cells under the map fitted without its frames (how the map carries to a material it has not seen). "
             "The held-out sets are in `docs/reports/site_states.md`. Validation sets missing below have no "
             "scored cell whose class the reading set (binaries: there the network's classes and confidence "
             "stand, calibrated by `benchmarks/calibrate_confidence.py`).", "",
             "| set | cells | right | mean confidence before | after | ECE before | ECE after | material left out |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for name, n, right, cb, ca, eb, ea, el in rows:
        lines.append(f"| {name} | {n} | {100 * right:.1f} % | {cb:.3f} | {ca:.3f} | {eb:.4f} | {ea:.4f} | {el:.4f} |")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text("\n".join(lines) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
