"""Site states on held-out alloy and doped frames: vacancy vs substitution, effective Z,
chalcogen atoms, ``unresolved`` and detection limits; optionally real frames under several
material flags.

    python benchmarks/site_states.py [--n 6] [--size 384] [--multislice 2] [--multislice-sets F ...] \
        [--only SET[:PRESET] ...] \
        [--real FRAME:PIXEL_SIZE:FLAG1;FLAG2 ...] [--site-head default|none|WEIGHTS [--site-head-light-metals]] \
        [--out docs/reports/site_states.md]

Every frame is simulated here with its own seed (none of them is a test's frame) and
analysed end to end with :func:`napari_tmd_defects.analyze` and the shipped networks.
Sites are matched to the truth's columns (within 0.3 a); boundary sites are left out.
Fast-model frames use the ``paper`` preset (λ 5-20, μ 20, Z exponent 1.7), the
``realistic`` one (Z exponent 1.6-2.1, aberrations, contamination, 8-bit/JPEG exports)
and the ``hard`` one (λ 3-10, 15-30 Å defocus and astigmatism);
multislice frames (abTEM, optional) the default 80 kV optics with paper noise.
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

import numpy as np

from napari_tmd_defects import analyze
from napari_tmd_defects.datasets import sample_conditions
from napari_tmd_defects.evaluation import CellScore, match_sites, score_result
from napari_tmd_defects.materials import get_material
from napari_tmd_defects.simulation import Noise, simulate

SETS = [
    "Mo0.8W0.2Te2",
    "Mo0.5W0.5Se2",
    "WS1.4Se0.6",
    "MoS2:Re0.03",
    "WSe2:Cr0.04",
    "WSe2:V0.04",
    "MoSe2:Nb0.04",
    "WS2",
]
MULTISLICE_SETS = ["Mo0.8W0.2Se2", "MoS2:Re0.05"]
#: fast-model presets, in the plan's order
PRESETS = ("paper", "realistic", "hard")
CLASS_WEIGHTS = (1, 1, 2, 1, 1)  # more metal vacancies than the paper's mix: both kinds to tell apart


def _score(res, truth) -> dict[str, np.ndarray]:
    """Per matched interior site: truth and reading, metal and chalcogen."""
    model, st = res.sites, res.site_states
    if st is None or model is None:  # no lattice found in the frame: nothing read
        return {"M": (np.zeros(0, int), np.zeros(0, object), np.zeros(0, int), np.zeros(0)),
                "X": (np.zeros((0, 2), int), np.zeros(0, object), np.zeros(0, int), np.zeros(0))}
    c = model.cells
    keep = ~c.boundary
    out = {}
    for role, idx, true_xy, tz in (("M", c.m[keep], truth.cell_m_site, truth.cell_m_z),
                                   ("X", c.x[keep], truth.cell_x_site, truth.cell_x_z)):
        j = match_sites(model.sites.xy[idx], true_xy, truth.a_px)
        ok = j >= 0
        ok &= ~truth.cell_boundary[np.maximum(j, 0)]
        out[role] = (tz[j[ok]], st.state[idx[ok]], st.atoms[idx[ok]], st.z_eff[idx[ok]])
    return out


def _metal_row(name, rows, host) -> dict:
    z = np.concatenate([r["M"][0] for r in rows])
    state = np.concatenate([r["M"][1] for r in rows]).astype(str)
    zeff = np.concatenate([r["M"][3] for r in rows])
    hz = get_material(host).z_metal
    hm = get_material(host).metal
    vac, sub = z == 0, (z > 0) & (z != hz)
    called_vac = state == "vacant"
    undecided = np.isin(state, ["unresolved", "metal?"])
    called_sub = ~np.isin(state, ["vacant", hm]) & ~undecided
    either = vac | sub
    right = np.where(vac, called_vac, called_sub)
    decided = either & ~undecided
    rel = np.abs(zeff[sub & called_sub] - z[sub & called_sub]) / z[sub & called_sub]
    return {
        "set": name, "sites": int(len(z)), "vacancies": int(vac.sum()), "substituents": int(sub.sum()),
        "vac_vs_sub": right[either].mean() if either.any() else np.nan,
        "vac_vs_sub_decided": right[decided].mean() if decided.any() else np.nan,
        "undecided": undecided[either].mean() if either.any() else np.nan,
        "vac_recall": called_vac[vac].mean() if vac.any() else np.nan,
        "vac_precision": vac[called_vac].mean() if called_vac.any() else np.nan,
        "sub_recall": called_sub[sub].mean() if sub.any() else np.nan,
        "sub_precision": sub[called_sub].mean() if called_sub.any() else np.nan,
        "zeff_median_err": float(np.nanmedian(rel)) if len(rel) else np.nan,
        # over the columns that measure it (a column cut flat by a clipped export gives none)
        "zeff_within_15": float(np.mean(rel[np.isfinite(rel)] <= 0.15)) if np.isfinite(rel).any() else np.nan,
        "zeff_unmeasured": float(np.mean(~np.isfinite(rel))) if len(rel) else np.nan,
        "unresolved": float(np.mean(state == "unresolved")),
    }


def _chalcogen_row(name, rows) -> dict:
    z = np.concatenate([r["X"][0] for r in rows])
    atoms = np.concatenate([r["X"][2] for r in rows])
    n_true = (z > 0).sum(axis=1)
    read = atoms >= 0
    return {
        "set": name, "sites": int(len(z)),
        "atoms_right": float(np.mean(atoms[read] == n_true[read])) if read.any() else np.nan,
        "v1_precision": float(np.mean(n_true[atoms == 1] == 1)) if np.any(atoms == 1) else np.nan,
        "v1_recall": float(np.mean(atoms[n_true == 1] == 1)) if np.any(n_true == 1) else np.nan,
        "v2_precision": float(np.mean(n_true[atoms == 0] == 0)) if np.any(atoms == 0) else np.nan,
        "v2_recall": float(np.mean(atoms[n_true == 0] == 0)) if np.any(n_true == 0) else np.nan,
        "unresolved": float(np.mean(~read)),
    }


def _pct(x) -> str:
    return "–" if x != x else f"{100 * x:.1f} %"


def plan_seed(index: int) -> int:
    """The seed of the set at ``index`` in the benchmark's plan (fast-model sets first)."""
    return 90_000 + 100 * index


def fast_seed(formula: str, preset: str) -> int:
    """The seed of a fast-model set (``formula`` in :data:`SETS`, ``preset`` in :data:`PRESETS`)."""
    return plan_seed(SETS.index(formula) * len(PRESETS) + PRESETS.index(preset))


def held_out_frames(formula: str, preset: str, n: int, size: int, seed: int, multislice: bool = False):
    """The set's ``n`` frames, simulated in order from ``seed``: yields ``(simulation, pixel size Å/px)``."""
    rng = np.random.default_rng(seed)
    for k in range(n):
        if multislice:
            from napari_tmd_defects.multislice import simulate_multislice

            sim = simulate_multislice(formula, size, 0.1, rotation_deg=float(rng.uniform(0, 60)),
                                      defect_fraction=0.12, class_weights=CLASS_WEIGHTS, seed=seed + k,
                                      frozen_phonons=0, noise=Noise(12.0, 20.0))
            yield sim, 0.1
        else:
            kw = sample_conditions(preset, rng, (size, size), pixel_size=(0.08, 0.12), rotation="random",
                                   defect_fraction=0.12)
            yield simulate(formula, size, class_weights=CLASS_WEIGHTS, seed=seed + k, **kw), kw["pixel_size"]


def run_set(formula: str, preset: str, n: int, size: int, seed: int, multislice: bool = False, site_head=None):
    rows, limits, seconds = [], [], 0.0
    cells = CellScore()
    for sim, ps in held_out_frames(formula, preset, n, size, seed, multislice):
        t0 = time.perf_counter()
        res = analyze(sim.image, ps, formula, site_head=site_head)
        seconds += time.perf_counter() - t0
        rows.append(_score(res, sim.truth))
        limits.append(res.site_states.detection_limits if res.site_states is not None else {})
        cells.add(score_result(res, sim.truth))
    return rows, limits, seconds / max(n, 1), cells


def _limit_text(limits: list[dict], role: str, state: str) -> str:
    vals = [lim.get(role, {}).get(state) for lim in limits]
    nums = [v["min_detectable_fraction"] for v in vals if isinstance(v, dict)]
    undet = sum(v == "undetectable" for v in vals)
    if not nums:
        return "undetectable" if undet else "–"
    return f"{100 * float(np.median(nums)):.2f} %" + (f" ({undet} undetectable)" if undet else "")


def _real(spec: str, site_head=None) -> list[str]:
    from napari_tmd_defects.io import read_image

    path, ps, flags = spec.split(":", 2)
    img = read_image(path)
    img = img[0] if isinstance(img, tuple) else img
    lines = []
    for flag in flags.split(";"):
        res = analyze(img, float(ps) if ps else None, flag, site_head=site_head)
        lab = res.labels[res.labels >= 0]
        m = res.site_state_counts().get("M", {})
        x = res.site_state_counts().get("X", {})
        top = lambda d: ", ".join(f"{k} {v}" for k, v in list(d.items())[:5])  # noqa: E731
        lines.append(f"| {Path(path).name} | `{flag}` | {100 * np.mean(lab > 0):.1f} % | {top(m)} | {top(x)} |")
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=6, help="frames per set and preset")
    ap.add_argument("--size", type=int, default=384)
    ap.add_argument("--multislice", type=int, default=0, help="multislice frames per multislice set (0: none)")
    ap.add_argument("--multislice-size", type=int, default=128)
    ap.add_argument("--multislice-sets", nargs="*", default=MULTISLICE_SETS,
                    help="compositions simulated by multislice (after the default ones, more keep those' seeds)")
    ap.add_argument("--real", nargs="*", default=[], help="FRAME:PIXEL_SIZE:FLAG1;FLAG2 (pixel size may be empty)")
    ap.add_argument("--out", default="docs/reports/site_states.md")
    ap.add_argument("--only", nargs="*", default=[],
                    help="run only these sets, as FORMULA or FORMULA:PRESET (same seeds as the full run)")
    ap.add_argument("--site-head", default="default",
                    help="the site-state head alloys' metal sites are read with (a weights file, or 'default': the "
                         "shipped one, as analyze does), or 'none': the column heights")
    ap.add_argument("--site-head-roles", nargs="*", default=None, choices=["M", "X"],
                    help="sublattices read from the head (default: the weights card's)")
    ap.add_argument("--site-head-light-metals", action="store_true",
                    help="use the head also for layers listing a light (3d) metal (states.HEAD_MIN_METAL_Z), "
                         "which the reading otherwise keeps on the heights")
    args = ap.parse_args()
    head = None
    if args.site_head != "none":
        from napari_tmd_defects.sitehead import load_site_head

        if args.site_head_light_metals:
            import napari_tmd_defects.states as states

            states.HEAD_MIN_METAL_Z = 0

        head = load_site_head(args.site_head,
                              roles=tuple(args.site_head_roles) if args.site_head_roles else None)

    metal, chalc, lim_rows, cell_rows = [], [], [], []
    plan = [(f, p, False) for f in SETS for p in PRESETS]
    plan += [(f, "multislice", True) for f in args.multislice_sets if args.multislice > 0]
    for i, (formula, preset, ms) in enumerate(plan):
        if args.only and formula not in args.only and f"{formula}:{preset}" not in args.only:
            continue
        n = args.multislice if ms else args.n
        size = args.multislice_size if ms else args.size
        rows, limits, sec, cells = run_set(formula, preset, n, size, seed=plan_seed(i), multislice=ms,
                                           site_head=head)
        name = f"{formula} ({preset}, {n} × {size}²)"
        host = get_material(formula).name
        metal.append(_metal_row(name, rows, host))
        chalc.append(_chalcogen_row(name, rows))
        lim_rows.append((name, _limit_text(limits, "M", "vacant"),
                         _limit_text(limits, "X", get_material(formula).chalcogen), sec))
        cell_rows.append((name, cells))
        m = metal[-1]
        print(f"{name}: vac/sub {_pct(m['vac_vs_sub'])} (decided {_pct(m['vac_vs_sub_decided'])}), Zeff err {_pct(m['zeff_median_err'])}, "
              f"X atoms {_pct(chalc[-1]['atoms_right'])}, class accuracy {_pct(cells.class_accuracy)}, "
              f"ECE {cells.ece:.4f} ({sec:.1f} s/frame)", flush=True)

    # the command as run, frames named by their file names only (they live outside the project)
    args_shown = [(Path(a.split(":", 1)[0]).name + ":" + a.split(":", 1)[1]) if ":" in a and "/" in a else a
                  for a in sys.argv[1:]]
    cmd = "python benchmarks/site_states.py " + " ".join(f'"{a}"' if ";" in a else a for a in args_shown)
    lines = [
        "# Site states: vacancies, substituents, chalcogen atoms, detection limits",
        "",
        f"Command: `{cmd.strip()}` · {platform.machine()}, Python {platform.python_version()}, "
        f"{time.strftime('%Y-%m-%d')}.",
        "",
        "Held-out frames simulated by the benchmark (own seeds), analysed end to end (`analyze`, shipped "
        "networks, the composition given as the material). Interior sites matched to the truth within 0.3 a. "
        "*vac vs sub*: share of the sites that are vacant or hold a substituent whose reading says which "
        "(vacant, or a species other than the host), over all of them and over those the reading decides "
        "(*undecided*: `unresolved`, or `metal?` where the species cannot be told, e.g. Nb and Mo); *Z_eff*: the effective atomic number of substituent "
        "columns from their intensity (calibrated Z-contrast, `docs/reports/z_contrast.md`), over the substituents "
        "called as such; *not measured*: those whose column is cut flat by a clipped 8-bit export (its intensity "
        "only a lower bound: no Z_eff).",
        "",
        "## Metal sites",
        "",
        "| set | sites | vacancies | substituents | vac vs sub (all) | vac vs sub (decided) | undecided "
        "| V_M recall | V_M precision | substituent recall | substituent precision | Z_eff median error "
        "| Z_eff within ±15 % | Z_eff not measured | unresolved |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for m in metal:
        lines.append(f"| {m['set']} | {m['sites']} | {m['vacancies']} | {m['substituents']} | {_pct(m['vac_vs_sub'])} | "
                     f"{_pct(m['vac_vs_sub_decided'])} | {_pct(m['undecided'])} | "
                     f"{_pct(m['vac_recall'])} | {_pct(m['vac_precision'])} | {_pct(m['sub_recall'])} | "
                     f"{_pct(m['sub_precision'])} | {_pct(m['zeff_median_err'])} | {_pct(m['zeff_within_15'])} | "
                     f"{_pct(m['zeff_unmeasured'])} | {_pct(m['unresolved'])} |")
    lines += ["", "## Chalcogen sites", "",
              "| set | sites | atoms right (read sites) | V_X1 precision | V_X1 recall | V_X2 precision | V_X2 recall "
              "| unresolved |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for c in chalc:
        lines.append(f"| {c['set']} | {c['sites']} | {_pct(c['atoms_right'])} | {_pct(c['v1_precision'])} | "
                     f"{_pct(c['v1_recall'])} | {_pct(c['v2_precision'])} | {_pct(c['v2_recall'])} | "
                     f"{_pct(c['unresolved'])} |")
    lines += ["", "## Detection limits (median over the frames of a set)", "",
              "Minimum detectable share of the sites (Currie, 95 % posterior to call a state), from each frame's "
              "own noise.", "",
              "| set | metal vacancy | one-atom chalcogen column (V_X1) | s per frame |", "|---|---:|---:|---:|"]
    for name, lm, lx, sec in lim_rows:
        lines.append(f"| {name} | {lm} | {lx} | {sec:.2f} |")
    lines += ["", "## Cells", "",
              "The cell classes (a view of the site states for alloys and dopants), scored like the evaluation "
              "reports: class accuracy on cells whose chalcogen state is resolved, vacancy precision site by site, "
              "and the expected calibration error of the reported confidence.", "",
              "| set | cells | class accuracy | V_M precision | V_X1 precision | V_X2 precision | chalcogen unresolved "
              "| ECE |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for name, c in cell_rows:
        pre = c.site_precision()
        unres = c.n_unresolved / c.n_matched if c.n_matched else float("nan")
        lines.append(f"| {name} | {c.n_matched} | {_pct(c.class_accuracy)} | {_pct(pre[0])} | {_pct(pre[1])} | "
                     f"{_pct(pre[2])} | {_pct(unres)} | {c.ece:.4f} |")
    if args.real:
        lines += ["", "## Real frames under several material flags", "",
                  "The same frame analysed with different `--material`: the defect fraction and the site states "
                  "(most common first). Frames are third-party and not part of the project (see "
                  "`docs/reports/real_frames.md` for sources).", "",
                  "| frame | material | defective cells | metal sites | chalcogen sites |", "|---|---|---:|---|---|"]
        for spec in args.real:
            lines += _real(spec, head)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
