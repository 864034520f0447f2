"""CNN-2 ablation study (2DIP-Net Fig. 3-4): input channels, input size, training noise.

    python benchmarks/classifier_ablations.py --work DIR [--report docs/reports/classification.md]

Everything is generated from seeds and cached under DIR (datasets, crops, models,
results), so a rerun only redoes what is missing. Steps:

1. Held-out test sets (``tmd-defects simulate``, other seeds than any training data):
   ``test_realistic`` (randomised conditions, a proxy for experimental frames) and
   ``test_paper`` (the paper's imaging conditions), 768² px, 0.03-0.15 Å/px, half of the
   cells defective (uniform over the five defect classes).
2. Training crops from simulated images (``classification.simulate_crops``):
   the main mix (presets paper + realistic, intensity augmentation, box jitter ±7 %)
   for the channel and input-size runs; paper optics with one noise setting each (no
   intensity augmentation, box jitter ±7 %) for the noise study.
3. One short training per run, the same budget for all (``--steps`` x ``--batch-size``);
   the 224² run gets a reduced budget (``--steps-224`` x 32), as one step costs ~30x
   more there.
4. Every model is evaluated with the full inference path (``CellClassifier.predict``
   on the test images with ground-truth boxes).
5. The report: tables, confusion-matrix PNGs (docs/reports/img/) and numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from napari_tmd_defects import classification as C  # noqa: E402
from napari_tmd_defects.datasets import generate_dataset  # noqa: E402
from napari_tmd_defects.materials import get_material  # noqa: E402

NAMES = get_material("MoTe2").class_names
TEST_SETS = {
    "test_realistic": dict(preset="realistic", seed=9001),
    "test_paper": dict(preset="paper", seed=9002),
}
TEST_KW = dict(n=24, size=768, pixel_size=(0.03, 0.15), defect_fraction=0.5)

# name -> (crop cache, (input size, channels), group, label)
RUNS = {
    "ch2_s32": ("mix", (32, 2), "channels", "2-channel, 32²"),
    "ch1_s32": ("mix", (32, 1), "channels", "1-channel, 32²"),
    "ch1_lam5-20_mu20": ("noise:5-20:20", (32, 1), "channels", "1-channel, 32², paper noise only"),
    "ch2_s64": ("mix", (64, 2), "size", "2-channel, 64²"),
    "ch2_s224": ("mix224", (224, 2), "size", "2-channel, 224² (reduced budget)"),
    "ch2_s32_reduced": ("mix224", (32, 2), "size", "2-channel, 32² (224²'s reduced budget)"),
    "lam5-20_mu20": ("noise:5-20:20", (32, 2), "noise", "λ 5–20, μ 20 (paper's choice)"),
    "lamnone_mu20": ("noise:none:20", (32, 2), "noise", "λ none, μ 20"),
    "lam20-40_mu20": ("noise:20-40:20", (32, 2), "noise", "λ 20–40, μ 20"),
    "lam40-80_mu20": ("noise:40-80:20", (32, 2), "noise", "λ 40–80, μ 20"),
    "lam5-20_mu0": ("noise:5-20:0", (32, 2), "noise", "λ 5–20, μ none"),
    "lam5-20_mu10": ("noise:5-20:10", (32, 2), "noise", "λ 5–20, μ 10"),
    "lam5-20_mu30": ("noise:5-20:30", (32, 2), "noise", "λ 5–20, μ 30"),
    "lam5-20_mu40": ("noise:5-20:40", (32, 2), "noise", "λ 5–20, μ 40"),
}
# the paper's accuracies on experimental images (Fig. 4b), for the noise runs
PAPER_NOISE = {
    "lam5-20_mu20": 95.93, "lamnone_mu20": 40.43, "lam20-40_mu20": 62.8, "lam40-80_mu20": 63.07,
    "lam5-20_mu0": 1.83, "lam5-20_mu10": 40.74, "lam5-20_mu30": 77.64, "lam5-20_mu40": 59.87,
}
PAPER_CHANNELS = {"1ch": {"Perfect": 100, "V_Te1": 52.48, "V_Te2": 35.71, "V_Mo": 33.33},
                  "2ch": {"Perfect": 100, "V_Te1": 97.87, "V_Te2": 100, "V_Mo": 100}}


def log(msg: str) -> None:
    print(time.strftime("%H:%M:%S"), msg, flush=True)


def ensure_tests(work: Path) -> dict[str, Path]:
    out = {}
    for name, kw in TEST_SETS.items():
        d = work / "datasets" / name
        if not (d / "dataset.json").exists():
            log(f"simulating {name}")
            generate_dataset(d, seed=kw["seed"], preset=kw["preset"], n_preview=2, **TEST_KW)
        out[name] = d
    return out


def _noise_spec(key: str):
    _, lam, mu = key.split(":")
    lam_r = None if lam == "none" else tuple(float(v) for v in lam.split("-"))
    return lam_r, float(mu)


def ensure_crops(work: Path, key: str, variants, args) -> dict:
    cache = work / "crops"
    cache.mkdir(parents=True, exist_ok=True)
    files = {v: cache / f"{key.replace(':', '_')}_s{v[0]}_c{v[1]}.npz" for v in variants}
    if all(f.exists() for f in files.values()):
        return {v: C.CropSet.load(f) for v, f in files.items()}
    t0 = time.perf_counter()
    if key == "mix":
        sets = C.simulate_crops(args.n_per_class, variants, seed=11)
    elif key == "mix224":
        sets = C.simulate_crops(args.n_per_class_224, variants, seed=12)
    else:
        sets = C.simulate_crops(args.n_per_class_noise, variants, seed=20 + sorted(
            k for k in {r[0] for r in RUNS.values()} if k.startswith("noise")).index(key),
            presets=("paper",), noise=_noise_spec(key), augment=False)
    for v, f in files.items():
        sets[v].save(f)
    log(f"crops {key}: {len(next(iter(sets.values())))} cells in {time.perf_counter() - t0:.0f} s")
    return sets


def run_one(work: Path, name: str, args, tests: dict[str, Path]) -> dict:
    res_path = work / "results" / f"{name}.json"
    if res_path.exists():
        return json.loads(res_path.read_text())
    key, variant, group, label = RUNS[name]
    variants = sorted({r[1] for r in RUNS.values() if r[0] == key})
    train = ensure_crops(work, key, variants, args)[variant]
    wpath = work / "models" / f"{name}.pt"
    reduced = key == "mix224"
    steps, bs = (args.steps_224, 32) if reduced else (args.steps, args.batch_size)
    if not wpath.exists():
        log(f"training {name}: {len(train)} crops, {steps} steps x {bs}")
        model, hist = C.train_classifier(train, None, steps=steps, batch_size=bs, lr=args.lr, seed=0,
                                         eval_every=max(steps // 4, 1), log=log)
        card = C.make_card(variant[1], variant[0], "standard", training={
            "study": name, "steps": steps, "batch_size": bs, "lr": args.lr, "seconds": hist["seconds"],
            "n_train": len(train), "crops": train.meta, "loss": hist["loss"]})
        C.save_classifier(wpath, model, card)
    clf = C.load_classifier(wpath, device="cpu")
    out = {"name": name, "label": label, "group": group, "input_size": variant[0], "channels": variant[1],
           "steps": steps, "batch_size": bs, "train_seconds": clf.card["training"]["seconds"],
           "n_train": clf.card["training"]["n_train"], "tests": {}}
    for tname, tdir in tests.items():
        r = C.evaluate_dataset(clf, tdir, max_images=args.max_images_224 if reduced else None)
        out["tests"][tname] = r
        log(f"{name} on {tname}: {100 * r['overall']:.2f}% of {r['n']} cells ({r['seconds']:.0f} s)")
    res_path.parent.mkdir(parents=True, exist_ok=True)
    res_path.write_text(json.dumps(out, indent=1))
    return out


def default_card(weights: Path | None) -> dict | None:
    """Card of the shipped model (its test scores come from ``tmd-defects evaluate-classifier
    --update-card``, which also writes docs/reports/classification_default.md)."""
    try:
        return C.load_classifier(weights, device="cpu").card
    except Exception as exc:  # no shipped model yet
        log(f"no default model ({exc})")
        return None


def pct(v: float) -> str:
    return "–" if v is None or not np.isfinite(v) else f"{100 * v:.2f}"


def cm_table(cm) -> list[str]:
    lines = ["| true \\ predicted | " + " | ".join(NAMES) + " |", "|---|" + "---:|" * len(NAMES)]
    lines += [f"| {NAMES[i]} | " + " | ".join(str(v) for v in row) + " |" for i, row in enumerate(cm)]
    return lines


def _acc(results, name, test="test_realistic", key="overall"):
    r = results.get(name)
    return None if r is None else r["tests"][test][key]


def findings(results: dict, default: dict | None) -> list[str]:
    """Summary bullets computed from the results (no hand-typed numbers)."""
    L = ["## Findings", ""]
    if default:
        sc = {k: v for k, v in default.get("scores", {}).items() if k != "validation"}
        for key, r in sc.items():
            ok = r["overall"] >= 0.99 and min(r["per_class"].values()) >= 0.98
            L.append(f"* Shipped model, {key}: {pct(r['overall'])} % overall, lowest class "
                     f"{pct(min(r['per_class'].values()))} % — target (≥ 99 % / ≥ 98 %) "
                     f"{'met' if ok else 'missed'}; the paper reports 95.93 % on its experiment.")
    a1, a2 = _acc(results, "ch1_s32"), _acc(results, "ch2_s32")
    if a1 is not None and a2 is not None:
        L.append(f"* 1 vs 2 channels (main mix, 32²): {pct(a1)} % vs {pct(a2)} % on test_realistic. With "
                 "per-image normalisation and training on varied simulated frames, the whole-cell input "
                 "is as good as the split input here: the paper's large 2-channel gain (on experimental "
                 "frames) is not reproduced on simulated test data.")
    b1, b2 = _acc(results, "ch1_lam5-20_mu20"), _acc(results, "lam5-20_mu20")
    if b1 is not None and b2 is not None:
        L.append(f"* In the paper's training regime (paper noise only) the two inputs give {pct(b1)} % (1 ch) "
                 f"vs {pct(b2)} % (2 ch) on test_realistic.")
    s32, s64, s224, s32r = (_acc(results, n) for n in ("ch2_s32", "ch2_s64", "ch2_s224", "ch2_s32_reduced"))
    def per_sample(n):
        r = results[n]
        return r["train_seconds"] / (r["steps"] * r["batch_size"])

    if s32 is not None and s64 is not None:
        L.append(f"* Input size at the same budget: 32² {pct(s32)} %, 64² {pct(s64)} % on test_realistic; "
                 f"64² training costs {per_sample('ch2_s64') / per_sample('ch2_s32'):.1f}x the time per crop "
                 "(inference: benchmarks/results/classification_speed.md). 32² is the default: it meets "
                 "the accuracy target at the lowest cost.")
    if s224 is not None and s32r is not None:
        L.append(f"* With the tiny 224² budget ({results['ch2_s224']['steps']} steps × 32), 224² reaches "
                 f"{pct(s224)} % and 32² {pct(s32r)} % on the first {results['ch2_s224']['tests']['test_realistic']['n']} "
                 "test_realistic cells: per crop seen, the larger input learns faster, but a 224² crop "
                 f"costs {per_sample('ch2_s224') / per_sample('ch2_s32_reduced'):.0f}x the training time of a 32² "
                 "crop, and 32² with its normal budget already meets the accuracy target (above).")
    noise = {n: _acc(results, n) for n, r in RUNS.items() if r[2] == "noise" and n in results}
    if noise:
        best = max(noise, key=lambda n: noise[n])
        worst = min(noise, key=lambda n: noise[n])
        paper_min = min(_acc(results, n, "test_paper") for n in noise)
        L.append(f"* Noise study: best on test_realistic is {RUNS[best][3]} ({pct(noise[best])} %), worst "
                 f"{RUNS[worst][3]} ({pct(noise[worst])} %); on test_paper every setting scores ≥ "
                 f"{pct(paper_min)} %. The simulated paper-condition test hardly separates the training "
                 "noises (unlike the paper's experiment, Fig. 4b); the randomised test does.")
        if default:
            d = default.get("scores", {}).get("test_realistic, box jitter 0")
            if d is not None:
                better = d["overall"] > noise[best]
                L.append(f"* Training on the randomised mix (shipped model, {pct(d['overall'])} % on "
                         f"test_realistic, longer training) {'beats' if better else 'does not beat'} the best "
                         f"single-noise setting ({pct(noise[best])} %, short training).")
    L.append("* Inference speed (4,000 cells, crops included): benchmarks/results/classification_speed.md. "
             "On the shared 2-core CPU used here the ≤ 2 s target was not demonstrated (one thread, "
             "under load, came closest); it needs a re-run on an idle machine.")
    return L


def write_report(path: Path, results: dict, default: dict | None, args, argv) -> None:
    img = path.parent / "img"
    tests = list(TEST_SETS)
    L = [
        "# CNN-2 (unit-cell classifier): evaluation and ablations",
        "",
        "Reproduces the paper's classification study (2DIP-Net, Fig. 3-4, Table 1) on held-out "
        "simulated data and evaluates the shipped default model.",
        "",
        f"Command: `python benchmarks/classifier_ablations.py {' '.join(argv).replace(str(args.work), 'DIR')}` "
        "(DIR: a scratch folder for datasets, crops and models)  ",
        f"Hardware: {platform.machine()}, {os.cpu_count()} logical CPUs (shared), "
        f"{torch.get_num_threads()} torch thread(s), torch {torch.__version__}, no GPU.",
        "",
        "## Data",
        "",
        "Held-out test sets (seeds unused by any training data), 24 images each, 768² px, "
        "pixel size uniform in 0.03–0.15 Å/px, 50 % of the cells defective (uniform over the five "
        "defect classes), ground-truth cell boxes:",
        "",
    ]
    for name, kw in TEST_SETS.items():
        L.append(f"* `{name}`: `tmd-defects simulate --out {name} --n 24 --size 768 --preset {kw['preset']} "
                 f"--pixel-size 0.03 0.15 --defect-fraction 0.5 --seed {kw['seed']}`")
    L += [
        "",
        "`test_realistic` draws randomised optics (source blur, defocus, astigmatism), dose "
        "(λ 4–60), read noise (μ 0–30), background, contamination, scan distortions and 8-bit "
        "exports per image: the proxy for experimental frames. `test_paper` uses the paper's "
        "conditions (λ 5–20, μ 20, ideal 80 kV probe).",
        "",
        f"Training crops for the ablations: `classification.simulate_crops` — channel and size runs: "
        f"{args.n_per_class} cells per class (presets paper + realistic, pixel size 0.03–0.18 Å/px "
        f"log-uniform, gain/offset/gamma/blur augmentation, box edges jittered by ±7 % of the box), "
        f"seed 11; the 224² run: {args.n_per_class_224} per class, seed 12; noise study: "
        f"{args.n_per_class_noise} per class per setting, paper optics, that noise only, no intensity "
        "augmentation, same box jitter, seeds 20–27.",
        "",
        f"Training budget per ablation run: {args.steps} steps × {args.batch_size} crops (AdamW, one-cycle, "
        f"peak lr {args.lr:g}, cross-entropy, class-balanced sampling, from scratch); the 224² run: "
        f"{args.steps_224} steps × 32 crops, evaluated on the first {args.max_images_224} images of each "
        "test set (its inference is ~100x slower); a 32² run with that same reduced budget, data and test images "
        "(`2-channel, 32² (224²'s reduced budget)`) is the like-for-like comparison. Per-class accuracy is the recall of that class, as in "
        "the paper.",
        "",
    ]
    L += [
        "## Differences from the paper's protocol",
        "",
        "* Optimiser: AdamW with a one-cycle schedule (peak lr 2e-3, weight decay 5e-4) "
        "instead of Adam at a constant 2e-6 for 40 epochs: trained from scratch (no downloadable "
        "ImageNet weights), the paper's rate does not converge within a CPU budget.",
        "* Input: 32² per channel (ResNet-18 with its standard stem) instead of 224²: a unit cell is "
        "only ~20–110 px wide at 0.03–0.18 Å/px, and 32² is as accurate here at ~1/50 of the "
        "compute (see the input-size table and benchmarks/results/classification_speed.md).",
        "* Data: crops of every class are cut from simulated full frames (neighbours, probe tails, "
        "noise, scan distortions) with jittered boxes and per-image normalisation, instead of "
        "800/200 noised single-cell simulations per class; test sets are held-out simulated frames "
        "(the paper's experimental frames and their hand labels are not available).",
        "",
    ]
    if default:
        card = default
        tr = card.get("training", {})
        L += ["## Shipped default model", "",
              f"`weights/classifier.pt`: {card.get('input')}, {card['input_size']}² px per channel, ResNet-18 "
              f"(standard stem), {tr.get('steps')} steps × {tr.get('batch_size')} crops "
              f"({tr.get('n_train')} simulated crops, {tr.get('seconds', 0) / 60:.0f} min on one CPU thread).",
              f"Training command: `{tr.get('command')}`. {tr.get('note', '')}", "",
              "Scores on the held-out test sets (full inference path, ground-truth boxes, or boxes with "
              "every edge moved by up to ±7 % of the box like detector boxes); confusion matrices in "
              "[classification_default.md](classification_default.md).", "",
              "| test set | cells | overall | " + " | ".join(NAMES) + " |",
              "|---|---:|---:|" + "---:|" * len(NAMES)]
        for key, r in card.get("scores", {}).items():
            if key == "validation":
                continue
            L.append(f"| {key} | {r['n']} | **{pct(r['overall'])}** | "
                     + " | ".join(pct(v) for v in r["per_class"].values()) + " |")
        L += [""]
    L += findings(results, default) + [""]
    # 1 vs 2 channels
    L += ["## 1 channel vs 2 channels (paper Fig. 3e)", "",
          "Same data, budget and 32² input; the 2-channel model sees the X-column half and the "
          "M-column half of the cell as separate channels. Two training regimes: the main mix "
          "(paper + realistic conditions, intensity augmentation) and the paper's regime (paper "
          "optics, λ 5–20, μ 20 only, no intensity augmentation).", "",
          "| model | test set | overall | " + " | ".join(NAMES) + " |", "|---|---|---:|" + "---:|" * len(NAMES)]
    for name in ("ch1_s32", "ch2_s32", "ch1_lam5-20_mu20", "lam5-20_mu20"):
        if name not in results:
            continue
        r = results[name]
        label = r["label"] if name != "lam5-20_mu20" else "2-channel, 32², paper noise only"
        for t in tests:
            s = r["tests"][t]
            L.append(f"| {label} | {t} | {pct(s['overall'])} | " + " | ".join(pct(v) for v in s["per_class"].values()) + " |")
    L += ["| paper, 1-channel | experiment (3037 cells) | – | 100 | 52.48 | 35.71 | 33.33 | – | – |",
          "| paper, 2-channel | experiment (3037 cells) | – | 100 | 97.87 | 100 | 100 | – | – |", ""]
    for name in ("ch1_s32", "ch2_s32"):
        if name not in results:
            continue
        for t in tests:
            s = results[name]["tests"][t]
            png = C.save_confusion_png(s["confusion"], NAMES, img / f"classification_{name}_{t}.png",
                                       f"{results[name]['label']}, {t}")
            L.append(f"![{name} {t}]({png.relative_to(path.parent).as_posix()})")
    L += [""]
    # input size
    L += ["## Input size", "",
          "Accuracy at the same number of training steps; time per training step (batch as listed, one "
          "thread, shared CPU) from the training runs. The paper resized to 224².", "",
          "| model | steps × batch | s / step | test_realistic | test_paper | min class (realistic) |",
          "|---|---:|---:|---:|---:|---:|"]
    for name in ("ch2_s32", "ch2_s64", "ch2_s224", "ch2_s32_reduced"):
        if name not in results:
            continue
        r = results[name]
        sp = r["train_seconds"] / r["steps"]
        L.append(f"| {r['label']} | {r['steps']} × {r['batch_size']} | {sp:.2f} | "
                 f"{pct(r['tests']['test_realistic']['overall'])} ({r['tests']['test_realistic']['n']} cells) | "
                 f"{pct(r['tests']['test_paper']['overall'])} ({r['tests']['test_paper']['n']} cells) | "
                 f"{pct(r['tests']['test_realistic']['min_class'])} |")
    L += ["", "Inference speed per input size: benchmarks/results/classification_speed.md.", ""]
    # noise study
    L += ["## Noise study (paper Fig. 4b)", "",
          "Each model is trained only on paper-optics images with the listed noise (Poisson λ = counts "
          "at the brightest column, Gaussian μ = std in grey levels of a 255 peak) and tested on both "
          "held-out sets. The paper's numbers are accuracies on its experimental images.", "",
          "| training noise | test_realistic | test_paper | min class (realistic) | paper (experiment) |",
          "|---|---:|---:|---:|---:|"]
    for name, (key, _, group, label) in RUNS.items():
        if group != "noise" or name not in results:
            continue
        r = results[name]
        L.append(f"| {label} | {pct(r['tests']['test_realistic']['overall'])} | "
                 f"{pct(r['tests']['test_paper']['overall'])} | {pct(r['tests']['test_realistic']['min_class'])} | "
                 f"{PAPER_NOISE[name]:.2f} |")
    L += ["", "## Per-class accuracy of every run", "",
          "| run | test set | overall | " + " | ".join(NAMES) + " |", "|---|---|---:|" + "---:|" * len(NAMES)]
    for name, r in results.items():
        for t in tests:
            s = r["tests"][t]
            L.append(f"| {r['label']} | {t} | {pct(s['overall'])} | " + " | ".join(pct(v) for v in s["per_class"].values()) + " |")
    L += ["", "## Confusion matrices (numbers)", "", "Rows: true class; columns: predicted class.", ""]
    for name, r in results.items():
        for t in tests:
            L += [f"### {r['label']} — {t} ({r['tests'][t]['n']} cells)", ""] + cm_table(r["tests"][t]["confusion"]) + [""]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(L) + "\n")
    log(f"wrote {path}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, required=True, help="folder for datasets, crops, models, results")
    ap.add_argument("--report", type=Path, default=Path("docs/reports/classification.md"))
    ap.add_argument("--runs", nargs="+", default=list(RUNS), choices=list(RUNS))
    ap.add_argument("--default-weights", type=Path, default=None,
                    help="model evaluated as the shipped default (default: the package's)")
    ap.add_argument("--steps", type=int, default=250)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--steps-224", type=int, default=40)
    ap.add_argument("--max-images-224", type=int, default=3)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--n-per-class", type=int, default=2500)
    ap.add_argument("--n-per-class-224", type=int, default=250)
    ap.add_argument("--n-per-class-noise", type=int, default=1200)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--report-only", action="store_true", help="only rewrite the report from cached results")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    tests = ensure_tests(args.work)
    results = {}
    for name in args.runs:
        res = args.work / "results" / f"{name}.json"
        if args.report_only and not res.exists():
            continue
        results[name] = run_one(args.work, name, args, tests)
    default = default_card(args.default_weights)
    write_report(args.report, results, default, args, sys.argv[1:])


if __name__ == "__main__":
    main()
