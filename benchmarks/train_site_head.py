"""Train the site-state head (:mod:`napari_tmd_defects.sitehead`) on alloys, dopants, mixed
chalcogens and binaries, fast-model and multislice frames.

    python benchmarks/train_site_head.py data  --cache DIR [--frames 12] [--size 448] [--multislice 8]
    python benchmarks/train_site_head.py train --cache DIR --out src/napari_tmd_defects/weights/site_head.pt \
        [--steps 8000] [--threads 1]

``data`` simulates the frames (``simulate`` over the ``paper``, ``realistic`` and ``hard``
presets of :func:`~napari_tmd_defects.datasets.sample_conditions`, and a few multislice
frames with paper noise), finds their sites with the pipeline (:func:`locate_cells`: the
positions inference sees), matches them to the truth (:func:`match_sites`, 0.3 a) and
writes one ``.npz`` per frame to ``DIR`` (patches, roles, targets); frames already written
are kept, so an interrupted run continues. Seeds start at :data:`SEED0` (the site-state
benchmark's frames use 90 000-93 000, the tests small ones).

Targets: the column's own signal over the mean signal of the frame's found metal sites
(the patches' scale, :func:`~napari_tmd_defects.sitehead.site_patches`): on fast-model
frames the simulator's column weights (``species_weights`` with the frame's Z exponent,
one-atom share and voltage), on multislice frames the calibrated Z-contrast
(``metal_signal``, ``chalcogen_signal`` with a mixed column's order along the beam,
``chalcogen_order_factor``).

``train`` fits the network with a Gaussian negative log-likelihood (mean and
log-variance), random 90° turns and flips of the patches, AdamW with a one-cycle
schedule, one thread; frames whose seed index is ``≡ 0 (mod 8)`` are validation. The card
next to the weights records the command, data, validation scores and speed.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np

#: Where the shipped weights live (the card's command names it).
WEIGHTS_OUT = "src/napari_tmd_defects/weights/site_head.pt"
#: First seed of the training frames (disjoint from the site-state benchmark's and the tests').
SEED0 = 700_000
#: Every fast-model composition is simulated under each preset.
PRESETS = ("paper", "realistic", "hard")
#: Compositions: Mo-W metal alloys, heavy and light dopants, mixed chalcogens, binaries.
COMPOSITIONS = [
    "Mo0.8W0.2Te2", "Mo0.5W0.5Te2", "Mo0.7W0.3Se2", "Mo0.5W0.5Se2", "Mo0.3W0.7S2", "Mo0.5W0.5S2",
    "MoS2:Re0.04", "WS2:Re0.03", "MoSe2:Re0.03", "MoTe2:Re0.03",
    "MoSe2:Nb0.05", "WSe2:Nb0.04", "WSe2:V0.05", "MoS2:V0.04", "WSe2:Cr0.05", "MoTe2:Cr0.04", "WS2:Cr0.04",
    "WS1.4Se0.6", "WS1.0Se1.0", "MoS0.8Se1.2", "MoSe1.4Te0.6",
    "MoTe2", "MoS2", "MoSe2", "WS2", "WSe2",
]
MULTISLICE_COMPOSITIONS = ["Mo0.6W0.4Se2", "MoS2:Re0.05", "WSe2:V0.05", "WS1.2Se0.8", "Mo0.5W0.5Te2", "WS2:Nb0.05"]
#: Defect mix of the frames (V_X1, V_X2, V_M, V_X1+V_M, V_X2+V_M): both kinds of site to tell apart.
CLASS_WEIGHTS = (1, 1, 2, 1, 1)
DEFECT_FRACTION = (0.05, 0.2)
PIXEL_SIZE = (0.08, 0.12)


def _targets(model, truth, ms: bool, optics) -> tuple[np.ndarray, np.ndarray]:
    """(target (S,), matched (S,) bool): each site's true column signal over the mean of
    the frame's found interior metal sites (NaN where unmatched)."""
    from napari_tmd_defects.evaluation import match_sites
    from napari_tmd_defects.simulation import species_weights
    from napari_tmd_defects.sites import ROLE_M, ROLE_X
    from napari_tmd_defects.zcontrast import chalcogen_order_factor, chalcogen_signal, metal_signal

    s = model.sites
    mz, xz = np.asarray(truth.cell_m_z), np.asarray(truth.cell_x_z).reshape(-1, 2)
    if ms:
        kv = optics.voltage_kv
        wm = np.asarray(metal_signal(mz, kv), float)
        wx = np.asarray(chalcogen_signal(xz[:, 0], xz[:, 1], kv), float).reshape(-1)
        wx = wx * chalcogen_order_factor(xz[:, 0], xz[:, 1], kv)  # x_z[:, 0]: the entrance atom
    else:
        wx, wm = species_weights(mz, xz, optics.z_exponent, optics.x1_fraction, optics.voltage_kv)
    tgt = np.full(len(s), np.nan)
    for role, true_xy, w in ((ROLE_M, truth.cell_m_site, wm), (ROLE_X, truth.cell_x_site, wx)):
        idx = np.flatnonzero(s.role == role)
        j = match_sites(s.xy[idx], true_xy, truth.a_px)
        ok = j >= 0
        tgt[idx[ok]] = w[j[ok]]
    ref = (s.role == ROLE_M) & ~s.placed & ~s.boundary & np.isfinite(tgt)
    if ref.sum() < 3:
        return tgt, np.zeros(len(s), bool)
    tgt = tgt / float(np.mean(tgt[ref]))
    return tgt, np.isfinite(tgt)


def _frame(spec: dict) -> dict:
    """Simulate, locate and cut one frame's training patches."""
    from napari_tmd_defects.datasets import sample_conditions
    from napari_tmd_defects.pipeline import locate_cells
    from napari_tmd_defects.simulation import Noise, Optics, simulate
    from napari_tmd_defects.sitehead import site_patches

    rng = np.random.default_rng(spec["seed"])
    size = spec["size"]
    if spec["preset"] == "multislice":
        from napari_tmd_defects.multislice import simulate_multislice

        ps = float(rng.uniform(*PIXEL_SIZE))
        sim = simulate_multislice(spec["formula"], size, ps, rotation_deg=float(rng.uniform(0, 60)),
                                  defect_fraction=float(rng.uniform(*DEFECT_FRACTION)), class_weights=CLASS_WEIGHTS,
                                  seed=spec["seed"], frozen_phonons=0,
                                  noise=Noise(float(rng.uniform(5.0, 20.0)), 20.0))
        optics = Optics()
    else:
        kw = sample_conditions(spec["preset"], rng, (size, size), pixel_size=PIXEL_SIZE, rotation="random",
                               defect_fraction=DEFECT_FRACTION)
        sim = simulate(spec["formula"], size, class_weights=CLASS_WEIGHTS, seed=spec["seed"], **kw)
        ps, optics = kw["pixel_size"], kw["optics"]
    frame = locate_cells(sim.image, ps, spec["formula"])
    model = frame.model
    if model is None or len(model.sites) < 30:
        return {}
    tgt, ok = _targets(model, sim.truth, spec["preset"] == "multislice", optics)
    patches, scale = site_patches(frame.image, model)
    s = model.sites
    return {"x": patches[ok, 0].astype(np.float16), "role": s.role[ok].astype(np.int8),
            "y": tgt[ok].astype(np.float32), "placed": s.placed[ok], "boundary": s.boundary[ok],
            "scale": np.float32(scale)}


def plan(frames: int, size: int, multislice: int, ms_size: int) -> list[dict]:
    """The frames of the training set, each with its own seed."""
    out, k = [], 0
    for formula in COMPOSITIONS:
        for preset in PRESETS:
            for _ in range(frames):
                out.append({"formula": formula, "preset": preset, "size": size, "seed": SEED0 + k})
                k += 1
    for i in range(multislice):
        out.append({"formula": MULTISLICE_COMPOSITIONS[i % len(MULTISLICE_COMPOSITIONS)], "preset": "multislice",
                    "size": ms_size, "seed": SEED0 + 50_000 + i})
    return out


def cmd_data(args) -> None:
    import torch

    torch.set_num_threads(args.threads)
    cache = Path(args.cache)
    cache.mkdir(parents=True, exist_ok=True)
    specs = plan(args.frames, args.size, args.multislice, args.multislice_size)
    # fast-model frames first, multislice (slow) last, so a time limit keeps the variety
    t0 = time.time()
    for i, spec in enumerate(specs):
        f = cache / f"{spec['seed']}.npz"
        if f.exists():
            continue
        if args.time_limit and time.time() - t0 > 60 * args.time_limit:
            print("time limit reached", flush=True)
            break
        t1 = time.time()
        d = _frame(spec)
        meta = json.dumps(spec)
        tmp = f.with_suffix(".tmp.npz")
        np.savez(tmp, meta=np.array(meta), **d)
        tmp.rename(f)
        print(f"[{i + 1}/{len(specs)}] {spec['formula']} {spec['preset']} seed {spec['seed']}: "
              f"{len(d.get('y', []))} sites, {time.time() - t1:.1f} s", flush=True)


def load_cache(cache: str | Path) -> dict:
    """All frames of a cache: patches, roles, targets, and per site the frame's index,
    preset and whether its frame is held out for validation."""
    xs, roles, ys, fid, presets, val = [], [], [], [], [], []
    metas = []
    for k, f in enumerate(sorted(Path(cache).glob("*[0-9].npz"))):
        d = np.load(f)
        meta = json.loads(str(d["meta"]))
        if "y" not in d or not len(d["y"]):
            continue
        n = len(d["y"])
        xs.append(d["x"])
        roles.append(d["role"])
        ys.append(d["y"])
        fid.append(np.full(n, k))
        presets.append(np.full(n, meta["preset"], object))
        val.append(np.full(n, (meta["seed"] - SEED0) % 8 == 0))
        metas.append(meta)
    return {"x": np.concatenate(xs), "role": np.concatenate(roles), "y": np.concatenate(ys),
            "frame": np.concatenate(fid), "preset": np.concatenate(presets), "val": np.concatenate(val),
            "metas": metas}


def _augment(x, rng):
    """Random 90° turns and flips of a batch (N, 1, P, P) (torch)."""
    import torch

    k = int(rng.integers(4))
    if k:
        x = torch.rot90(x, k, dims=(2, 3))
    if rng.random() < 0.5:
        x = torch.flip(x, dims=(3,))
    return x


def _nll(out, y, role):
    import torch

    xr = role == 0
    mu = torch.where(xr, out[:, 2], out[:, 0])
    lv = torch.where(xr, out[:, 3], out[:, 1]).clamp(-12, 6)
    return 0.5 * (lv + (y - mu) ** 2 * torch.exp(-lv))


def evaluate(net, data, sel) -> dict:
    """Validation numbers on the sites ``sel``: NLL, RMSE and z-score spread per role and preset."""
    from napari_tmd_defects.sitehead import SiteHead

    head = SiteHead(net, {})
    mu, lv = head.predict_patches(data["x"][sel, None].astype(np.float32), data["role"][sel])
    y, role, preset = data["y"][sel], data["role"][sel], data["preset"][sel]
    z = (y - mu) / np.exp(0.5 * lv)
    out = {"nll": float(np.mean(0.5 * (lv + (y - mu) ** 2 * np.exp(-lv))))}
    for rn, r in (("M", 1), ("X", 0)):
        for p in sorted(set(preset.tolist())):
            m = (role == r) & (preset == p)
            if m.any():
                out[f"{rn} {p}"] = {"n": int(m.sum()), "rmse": round(float(np.sqrt(np.mean((y[m] - mu[m]) ** 2))), 4),
                                    "z_std": round(float(np.std(z[m])), 3)}
    return out


def cmd_train(args) -> None:
    import torch

    from napari_tmd_defects.runtime import save_weights
    from napari_tmd_defects.sitehead import HALF_WIDTH_A, PATCH, SAMPLES_PER_A, build_site_head

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    data = load_cache(args.cache)
    tr = np.flatnonzero(~data["val"])
    va = np.flatnonzero(data["val"])
    print(f"{len(tr)} training sites, {len(va)} validation sites, {len(data['metas'])} frames", flush=True)
    x = torch.from_numpy(data["x"].astype(np.float32))[:, None]
    y = torch.from_numpy(data["y"])
    role = torch.from_numpy(data["role"].astype(np.int64))
    # sites that are not the most common state of their sublattice (vacancies, substituents,
    # one-atom columns) are rare: drawn this many times more often
    w = np.ones(len(tr))
    for r in (0, 1):
        m = data["role"][tr] == r
        med = np.median(data["y"][tr][m])
        w[m] = np.where(np.abs(data["y"][tr][m] - med) > 0.1 * max(med, 1e-3), args.rare_weight, 1.0)
    # the few multislice sites are drawn more often (the physics the fast model approximates)
    w = np.where(data["preset"][tr] == "multislice", w * args.multislice_weight, w)
    p_draw = w / w.sum()
    net = build_site_head(args.width)
    opt = torch.optim.AdamW(net.parameters(), lr=args.lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=args.lr, total_steps=args.steps, pct_start=0.15)
    t0 = time.time()
    ck = Path(args.cache) / "site_head.ckpt"
    start = 0
    if ck.exists():
        st = torch.load(ck, weights_only=False)
        net.load_state_dict(st["net"])
        opt.load_state_dict(st["opt"])
        sched.load_state_dict(st["sched"])
        start = st["step"]
        rng = st["rng"]
        print(f"resumed at step {start}", flush=True)
    net.train()
    run = 0.0
    for step in range(start, args.steps):
        b = rng.choice(tr, args.batch_size, p=p_draw)
        bt = torch.from_numpy(b)
        xb = _augment(x[bt], rng)
        loss = _nll(net(xb), y[bt], role[bt]).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        run = 0.98 * run + 0.02 * loss.item() if step > start else loss.item()
        if (step + 1) % 500 == 0 or step + 1 == args.steps:
            print(f"step {step + 1}: loss {run:.4f} ({time.time() - t0:.0f} s)", flush=True)
            torch.save({"net": net.state_dict(), "opt": opt.state_dict(), "sched": sched.state_dict(),
                        "step": step + 1, "rng": rng}, ck)
    net.eval()
    scores = evaluate(net, data, va)
    print(json.dumps(scores, indent=1), flush=True)
    presets = sorted(set(m["preset"] for m in data["metas"]))
    card = {
        "task": "site-state head",
        "model": "CNN: conv 3x3 (width/2) s1, conv (width) s2, conv (width) s1, conv (2 width) s2, each with batch "
                 "norm and ReLU; linear 2 width; linear 4 (metal mean, log-variance; chalcogen mean, log-variance)",
        "width": args.width,
        "patch": PATCH,
        "half_width_a": HALF_WIDTH_A,
        "samples_per_a": SAMPLES_PER_A,
        "input": "one channel: the frame block-averaged to >= samples_per_a px per a, sampled bilinearly on a "
                 "patch x patch grid +-half_width_a a around the site (axis-aligned), minus the patch's 10th "
                 "percentile, over the mean centre value of the frame's found interior metal sites",
        "output": "the column's own signal over the frame's mean metal column (0: empty), and its log-variance",
        "training": {
            "command": (f"python benchmarks/train_site_head.py train --cache DIR --out {WEIGHTS_OUT} --width {args.width} "
                        f"--steps {args.steps} --batch-size {args.batch_size} --lr {args.lr} "
                        f"--rare-weight {args.rare_weight} --multislice-weight {args.multislice_weight} "
                        f"--seed {args.seed} --threads {args.threads}"),
            "data_command": args.data_command,
            "frames": len(data["metas"]),
            "frames_per_preset": {p: sum(m["preset"] == p for m in data["metas"]) for p in presets},
            "compositions": sorted(set(m["formula"] for m in data["metas"])),
            "seeds": [int(min(m["seed"] for m in data["metas"])), int(max(m["seed"] for m in data["metas"]))],
            "validation": "frames with (seed - %d) %% 8 == 0" % SEED0,
            "n_train_sites": int(len(tr)),
            "n_val_sites": int(len(va)),
            "steps": args.steps, "batch_size": args.batch_size, "lr": args.lr, "rare_weight": args.rare_weight,
            "multislice_weight": args.multislice_weight,
            "optimizer": "AdamW one-cycle, weight decay 1e-4",
            "loss": "Gaussian negative log-likelihood (log-variance clamped to [-12, 6])",
            "augment": "random 90-degree turns and horizontal flips",
            "seed": args.seed,
            "seconds": round(time.time() - t0, 1),
            "threads": args.threads,
            "machine": f"{platform.machine()}, Python {platform.python_version()}, torch {torch.__version__}",
        },
        "scores": {"validation": scores},
    }
    save_weights(args.out, net.state_dict(), card, half=True)
    print(f"wrote {args.out}", flush=True)


def speed(weights: str | None, threads: int) -> dict:
    """Median seconds (of 4) of the head on a 2048² MoTe2 frame at 0.1 Å/px: patches, and
    patches plus network."""
    import torch

    from napari_tmd_defects.pipeline import locate_cells
    from napari_tmd_defects.simulation import Noise, Optics, simulate
    from napari_tmd_defects.sitehead import load_site_head, site_patches

    sim = simulate("MoTe2", 2048, pixel_size=0.1, rotation_deg=12.0, defect_fraction=0.1, optics=Optics(),
                   noise=Noise(10.0, 20.0), seed=5)
    frame = locate_cells(sim.image, 0.1, "MoTe2")
    model = frame.model
    head = load_site_head(weights)
    torch.set_num_threads(threads)
    head.read(frame.image, model)
    tp, tt = [], []
    for _ in range(4):
        t0 = time.perf_counter()
        p, _ = site_patches(frame.image, model)
        t1 = time.perf_counter()
        head.predict_patches(p, model.sites.role)
        tp.append(t1 - t0)
        tt.append(time.perf_counter() - t0)
    return {"frame": "2048² MoTe2 at 0.1 Å/px", "sites": len(model.sites), "threads": threads,
            "patches_seconds": round(float(np.median(tp)), 3), "seconds": round(float(np.median(tt)), 3)}


def cmd_card(args) -> None:
    """Add the speed (and a JSON file of further entries) to a weights file's card."""
    from napari_tmd_defects.runtime import load_weights, save_weights

    sd, card = load_weights(args.weights)
    if args.speed:
        card["speed"] = [speed(args.weights, th) for th in (1, 2)]
        print(json.dumps(card["speed"]), flush=True)
    if args.add:
        card.update(json.loads(Path(args.add).read_text()))
    save_weights(args.weights, sd, card, half=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    d = sub.add_parser("data", help="simulate and cut the training frames")
    d.add_argument("--cache", required=True)
    d.add_argument("--frames", type=int, default=12, help="fast-model frames per composition and preset")
    d.add_argument("--size", type=int, default=448)
    d.add_argument("--multislice", type=int, default=8, help="multislice frames (0: none)")
    d.add_argument("--multislice-size", type=int, default=176)
    d.add_argument("--threads", type=int, default=1)
    d.add_argument("--time-limit", type=float, default=0.0, help="minutes (0: none)")
    t = sub.add_parser("train", help="train the head on a cache")
    t.add_argument("--cache", required=True)
    t.add_argument("--out", default=WEIGHTS_OUT)
    t.add_argument("--width", type=int, default=16)
    t.add_argument("--steps", type=int, default=8000)
    t.add_argument("--batch-size", type=int, default=256)
    t.add_argument("--lr", type=float, default=3e-3)
    t.add_argument("--rare-weight", type=float, default=4.0)
    t.add_argument("--multislice-weight", type=float, default=20.0, help="draw multislice sites this much more often")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--threads", type=int, default=1)
    t.add_argument("--data-command", default="python benchmarks/train_site_head.py data --cache DIR --frames 12 "
                                             "--size 448 --multislice 8 --multislice-size 176")
    c = sub.add_parser("card", help="add the speed and further entries to a weights file's card")
    c.add_argument("--weights", default=WEIGHTS_OUT)
    c.add_argument("--speed", action="store_true")
    c.add_argument("--add", default=None, help="JSON file of entries to add")
    args = ap.parse_args()
    {"data": cmd_data, "train": cmd_train, "card": cmd_card}[args.cmd](args)


if __name__ == "__main__":
    main()
