"""Simulated datasets on disk: presets of imaging conditions, generation, loading, COCO export.

Layout written by :func:`generate_dataset` (``tmd-defects simulate``)::

    DIR/dataset.json          index: parameters, seed, one entry per image
    DIR/images/00000.tif      float32 grey levels (pixel size in the TIFF metadata)
    DIR/truth/00000.json      ground truth (see :class:`~.simulation.GroundTruth`)
    DIR/coco_hexagons.json    COCO boxes of hexagons (category 1 = hexagon)
    DIR/coco_cells.json       COCO boxes of unit cells (categories = the six classes)
    DIR/preview/00000.png     overlays of the first images (ground truth on the image)

COCO boxes are ``[x, y, width, height]`` with the pixel *edge* at 0 (our pixel
coordinates + 0.5), as COCO tools expect.
"""

from __future__ import annotations

import json
import math
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from .io import read_image, write_tiff
from .materials import get_material
from .simulation import (
    BOUNDARY_KINDS,
    Boundary,
    Distortion,
    GroundTruth,
    Noise,
    Optics,
    SimulatedImage,
    Vacuum,
    simulate,
)
from .visualization import save_truth_overlay

__all__ = [
    "MODELS",
    "PRESETS",
    "DatasetItem",
    "generate_dataset",
    "iter_dataset",
    "load_dataset",
    "sample_conditions",
    "sample_image",
]

DATASET_FORMAT = "napari-tmd-defects.dataset"

#: Names of the imaging-condition presets accepted by :func:`sample_conditions`.
PRESETS = ("paper", "realistic", "clean", "structure", "hard")
#: Image models accepted by :func:`generate_dataset`: the fast incoherent simulator and
#: the multislice backend (abTEM, optional extra ``[multislice]``).
MODELS = ("fast", "multislice")


def _loguniform(rng: np.random.Generator, lo: float, hi: float) -> float:
    return float(math.exp(rng.uniform(math.log(lo), math.log(hi))))


def sample_conditions(
    preset: str,
    rng: np.random.Generator,
    size: tuple[int, int] = (512, 512),
    pixel_size: float | tuple[float, float] = 0.12,
    rotation: float | str = 0.0,
    defect_fraction: float | tuple[float, float] = 0.1,
    vacuum: float = 0.0,
) -> dict[str, Any]:
    """Draw keyword arguments of :func:`~.simulation.simulate` for one image.

    Presets
    -------
    ``paper``
        The paper's settings: aberration-free 80 kV / 27 mrad probe, Poisson
        lambda uniform in [5, 20] counts at the brightest column, Gaussian mu = 20.
    ``realistic``
        Randomised conditions that cover real frames (e.g. the 2DIP-Net GUI's
        8-bit MoTe2 samples): source blur 0.3-1.2 Å FWHM, residual defocus and
        astigmatism, Z exponent 1.6-2.1, a single-chalcogen column 0.43-0.5 of a
        full one (multislice channelling), lambda 4-60 (log-uniform), mu 0-30,
        background 0-0.4 and contamination, scan-row jitter, linear drift (shear up
        to ~4°, stretch up to ~4 %), 8-bit exports, some JPEG-compressed.
    ``clean``
        Paper optics, no noise.
    ``hard``
        Low dose and poor optics: ``realistic``, but lambda 3-10 counts at the brightest
        column, residual defocus and astigmatism of 15-30 Å each, contamination always,
        8-bit exports, half of them JPEG-compressed (quality 60-90).
    ``structure``
        ``realistic``, plus one or two domain boundaries (tilt grain boundaries of any
        angle, mirror twin, inversion and translation boundaries; :class:`Boundary`),
        non-linear scan distortion (bending, flyback at the left edge) and, in a third of
        the images, weak chalcogen contrast (100 kV probe, background-subtracted 8-bit
        export).

    ``size`` (rows, cols) scales the drift. ``pixel_size`` and ``defect_fraction`` accept a value or a (low, high) range;
    ``rotation`` a value in degrees or ``"random"``. ``vacuum`` is the probability that
    the image holds vacuum (:class:`~.simulation.Vacuum`: a hole or an edge, half each,
    5-35 % of the field of view).
    """
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
    ps = pixel_size if np.isscalar(pixel_size) else rng.uniform(*pixel_size)
    df = defect_fraction if np.isscalar(defect_fraction) else rng.uniform(*defect_fraction)
    rot = rng.uniform(0.0, 360.0) if rotation == "random" else float(rotation)
    kw: dict[str, Any] = dict(pixel_size=float(ps), rotation_deg=rot, defect_fraction=float(df))
    if preset == "paper":
        kw["optics"] = Optics()
        kw["noise"] = Noise(poisson_lambda=rng.uniform(5.0, 20.0), gaussian_mu=20.0)
    elif preset == "clean":
        kw["optics"] = Optics()
        kw["noise"] = Noise(poisson_lambda=None, gaussian_mu=0.0)
    else:  # realistic (and the conditions of structure)
        kw["optics"] = Optics(
            convergence_mrad=rng.uniform(24.0, 32.0),
            defocus_a=float(np.clip(rng.normal(0.0, 15.0), -40, 40)),
            astigmatism_a=rng.uniform(0.0, 20.0) if rng.random() < 0.6 else 0.0,
            astigmatism_deg=rng.uniform(0.0, 180.0),
            source_fwhm_a=rng.uniform(0.3, 1.2),
            z_exponent=rng.uniform(1.6, 2.1),
            x1_fraction=rng.uniform(0.43, 0.5),
        )
        eight_bit = bool(rng.random() < 0.5)
        kw["noise"] = Noise(
            poisson_lambda=_loguniform(rng, 4.0, 60.0),
            gaussian_mu=rng.uniform(0.0, 30.0),
            background=rng.uniform(0.0, 0.4),
            contamination=rng.uniform(0.0, 0.3) if rng.random() < 0.5 else 0.0,
            contamination_scale_a=rng.uniform(5.0, 20.0),
            quantize_8bit=eight_bit,
            jpeg_quality=int(rng.integers(70, 96)) if eight_bit and rng.random() < 0.5 else None,
        )
        jitter_a = rng.uniform(0.0, 0.15) if rng.random() < 0.5 else 0.0
        # linear drift: shear up to ~4° and stretch up to ~4 % (the 2DIP-Net GUI's
        # experimental frames show ~3.7° shear and ~2.7 % stretch)
        drift = (
            np.array([rng.uniform(-0.07, 0.07), rng.uniform(-0.04, 0.04)]) * size[0]
            if rng.random() < 0.7
            else np.zeros(2)
        )
        kw["distortion"] = Distortion(
            row_jitter_px=jitter_a / kw["pixel_size"],
            row_jitter_corr=rng.uniform(0.5, 4.0),
            drift_px=(float(drift[0]), float(drift[1])),
        )
    if preset == "structure":
        _add_structure(kw, rng, size)
    if preset == "hard":
        sign = lambda: 1.0 if rng.random() < 0.5 else -1.0  # noqa: E731
        kw["optics"] = replace(kw["optics"], defocus_a=sign() * rng.uniform(15.0, 30.0),
                               astigmatism_a=rng.uniform(15.0, 30.0))
        kw["noise"] = replace(kw["noise"], poisson_lambda=rng.uniform(3.0, 10.0),
                              contamination=rng.uniform(0.1, 0.3), quantize_8bit=True,
                              jpeg_quality=int(rng.integers(60, 91)) if rng.random() < 0.5 else None)
    if not 0.0 <= vacuum <= 1.0:
        raise ValueError(f"vacuum is a probability in [0, 1], got {vacuum}")
    if vacuum > 0 and rng.random() < vacuum:
        kw["vacuum"] = Vacuum(kind="hole" if rng.random() < 0.5 else "edge", fraction=rng.uniform(0.05, 0.35),
                              roughness=rng.uniform(0.0, 0.3))
    return kw


def _add_structure(kw: dict[str, Any], rng: np.random.Generator, size: tuple[int, int]) -> None:
    """Boundaries, non-linear scan distortion and weak chalcogen contrast for ``structure``."""
    a_px = 3.3 / kw["pixel_size"]  # about a lattice constant, px
    bounds = []
    for _ in range(1 if rng.random() < 0.6 else 2):
        kind = str(rng.choice(BOUNDARY_KINDS))
        bounds.append(Boundary(
            kind=kind,
            angle_deg=float(rng.uniform(0.0, 180.0)),
            offset=float(rng.uniform(-0.5, 0.5)),
            misorientation_deg=float(rng.uniform(5.0, 55.0) * rng.choice([-1, 1])),
            variant=str(rng.choice(["X", "M"])),
            shift=(float(rng.choice([0.5, 1 / 3, 2 / 3])), float(rng.choice([0.0, 0.5]))),
        ))
    kw["boundaries"] = bounds
    d = kw["distortion"]
    kw["distortion"] = replace(
        d,
        bend_px=float(rng.uniform(0.0, 0.25) * a_px),
        bend_period=float(rng.uniform(0.8, 2.5)),
        flyback_px=float(rng.uniform(0.1, 0.4) * a_px) if rng.random() < 0.5 else 0.0,
        flyback_width=float(rng.uniform(0.04, 0.12)),
    )
    if rng.random() < 1 / 3:
        kw["optics"] = replace(kw["optics"], voltage_kv=100.0, z_exponent=float(rng.uniform(1.9, 2.1)))
        kw["noise"] = replace(kw["noise"], subtract_background=True, quantize_8bit=True)


def _simulate_item(
    material: str,
    size: tuple[int, int],
    preset: str,
    seed_seq,
    options: dict,
    model: str = "fast",
    model_options: dict | None = None,
) -> SimulatedImage:
    rng = np.random.default_rng(seed_seq)
    kw = sample_conditions(preset, rng, size, **options)
    noise_seed = int(rng.integers(2**31))
    a_px = get_material(material).a / kw["pixel_size"]
    origin = (
        (size[1] - 1) / 2.0 + rng.uniform(0, a_px),
        (size[0] - 1) / 2.0 + rng.uniform(0, a_px),
    )
    if model == "multislice":
        from .multislice import simulate_multislice

        sim = simulate_multislice(material, size, origin=origin, seed=noise_seed, **kw, **(model_options or {}))
    else:
        sim = simulate(material, size, origin=origin, seed=noise_seed, **kw)
    sim.truth.params["preset"] = preset
    return sim


@dataclass
class DatasetItem:
    """One image of a dataset on disk."""

    image_path: Path
    truth_path: Path

    def load(self) -> tuple[np.ndarray, GroundTruth]:
        image, _ = read_image(self.image_path)
        return image, GroundTruth.load(self.truth_path)


def _write_one(out: Path, k: int, sim: SimulatedImage, preview: bool) -> dict[str, Any]:
    name = f"{k:05d}"
    img_path = out / "images" / f"{name}.tif"
    gt_path = out / "truth" / f"{name}.json"
    write_tiff(img_path, sim.image, sim.truth.pixel_size)
    sim.truth.save(gt_path)
    if preview:
        save_truth_overlay(out / "preview" / f"{name}.png", sim.image, sim.truth)
    return {"image": f"images/{name}.tif", "truth": f"truth/{name}.json"}


def _generate_chunk(args) -> list[dict[str, Any]]:
    out, ks, seeds, material, size, preset, options, n_preview, model, model_options = args
    return [
        _write_one(out, k, _simulate_item(material, size, preset, s, options, model, model_options), k < n_preview)
        for k, s in zip(ks, seeds)
    ]


def generate_dataset(
    out_dir: str | Path,
    n: int,
    size: int | tuple[int, int] = 512,
    seed: int = 0,
    material: str = "MoTe2",
    preset: str = "paper",
    pixel_size: float | tuple[float, float] = 0.12,
    rotation: float | str = 0.0,
    defect_fraction: float | tuple[float, float] = 0.1,
    vacuum: float = 0.0,
    n_preview: int = 4,
    workers: int = 1,
    progress: Callable[[int, int], None] | None = None,
    model: str = "fast",
    model_options: dict[str, Any] | None = None,
) -> Path:
    """Simulate ``n`` images with ground truth into ``out_dir`` (deterministic by seed).

    Image ``k`` depends only on ``(seed, k)`` and the options, not on ``workers``.
    ``model`` is ``"fast"`` (:func:`~.simulation.simulate`) or ``"multislice"``
    (:func:`~.multislice.simulate_multislice`, needs the ``[multislice]`` extra;
    ``model_options`` are passed to it, e.g. ``{"frozen_phonons": 4}``); both draw the
    same conditions and ground truth for the same seed.
    Returns the path of ``dataset.json``.
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    if model not in MODELS:
        raise ValueError(f"unknown model {model!r}; choose one of {', '.join(MODELS)}")
    if model == "fast" and model_options:
        raise ValueError("model_options are only used by the multislice model")
    if model == "multislice":
        from .multislice import require_abtem

        require_abtem()
    get_material(material)
    if isinstance(size, (int, np.integer)):
        size = (int(size), int(size))
    out = Path(out_dir)
    for sub in ("images", "truth", "preview"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    seeds = np.random.SeedSequence(seed).spawn(n)
    options = dict(pixel_size=pixel_size, rotation=rotation, defect_fraction=defect_fraction, vacuum=vacuum)
    entries: list[dict[str, Any]] = []
    chunk = 8 if model == "fast" else 1  # multislice images take minutes: balance the workers
    jobs = [
        (out, list(range(i, min(i + chunk, n))), seeds[i : i + chunk], material, size, preset, options,
         n_preview, model, model_options)
        for i in range(0, n, chunk)
    ]
    if workers > 1:
        with ProcessPoolExecutor(max_workers=workers) as ex:
            for res in ex.map(_generate_chunk, jobs):
                entries.extend(res)
                if progress:
                    progress(len(entries), n)
    else:
        for job in jobs:
            entries.extend(_generate_chunk(job))
            if progress:
                progress(len(entries), n)
    _write_coco(out, entries)
    index = {
        "format": DATASET_FORMAT,
        "version": 1,
        "n": n,
        "size": list(size),
        "seed": seed,
        "material": material,
        "preset": preset,
        "model": model,
        "model_options": model_options or {},
        "pixel_size_A": pixel_size if np.isscalar(pixel_size) else list(pixel_size),
        "rotation": rotation,
        "defect_fraction": defect_fraction if np.isscalar(defect_fraction) else list(defect_fraction),
        "vacuum": vacuum,
        "items": entries,
    }
    path = out / "dataset.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(index, indent=1))
    os.replace(tmp, path)
    return path


def _write_coco(out: Path, entries: list[dict[str, Any]]) -> None:
    images, hex_ann, cell_ann = [], [], []
    names: tuple[str, ...] = ()
    for img_id, e in enumerate(entries, start=1):
        t = GroundTruth.load(out / e["truth"])
        names = t.class_names
        images.append({"id": img_id, "file_name": e["image"], "height": t.shape[0], "width": t.shape[1]})
        for b in t.hex_box:
            w, h = b[2] - b[0], b[3] - b[1]
            hex_ann.append(
                {"id": len(hex_ann) + 1, "image_id": img_id, "category_id": 1,
                 "bbox": [round(b[0] + 0.5, 3), round(b[1] + 0.5, 3), round(w, 3), round(h, 3)],
                 "area": round(w * h, 3), "iscrowd": 0}
            )
        for b, lab in zip(t.cell_box, t.cell_label):
            w, h = b[2] - b[0], b[3] - b[1]
            cell_ann.append(
                {"id": len(cell_ann) + 1, "image_id": img_id, "category_id": int(lab) + 1,
                 "bbox": [round(b[0] + 0.5, 3), round(b[1] + 0.5, 3), round(w, 3), round(h, 3)],
                 "area": round(w * h, 3), "iscrowd": 0}
            )
    (out / "coco_hexagons.json").write_text(json.dumps(
        {"images": images, "annotations": hex_ann, "categories": [{"id": 1, "name": "hexagon"}]}))
    (out / "coco_cells.json").write_text(json.dumps(
        {"images": images, "annotations": cell_ann,
         "categories": [{"id": i + 1, "name": n} for i, n in enumerate(names)]}))


def load_dataset(path: str | Path) -> list[DatasetItem]:
    """Items of a dataset written by :func:`generate_dataset` (``DIR`` or ``DIR/dataset.json``)."""
    p = Path(path)
    if p.is_dir():
        p = p / "dataset.json"
    if not p.exists():
        raise FileNotFoundError(f"no dataset index at {p} (run `tmd-defects simulate --out DIR` first)")
    index = json.loads(p.read_text())
    if index.get("format") != DATASET_FORMAT:
        raise ValueError(f"{p} is not a napari-tmd-defects dataset index")
    root = p.parent
    return [DatasetItem(root / e["image"], root / e["truth"]) for e in index["items"]]


def iter_dataset(path: str | Path) -> Iterator[tuple[np.ndarray, GroundTruth]]:
    """Yield ``(image, ground truth)`` for every item of a dataset."""
    for item in load_dataset(path):
        yield item.load()


def sample_image(seed: int = 0, size: int = 512) -> SimulatedImage:
    """The built-in sample: a defective MoTe2 frame like the paper's experimental ones.

    ``size`` x ``size`` px at 0.09 Å/px, 27 mrad probe with 0.6 Å source blur,
    lambda = 12 counts, mu = 15 grey levels, 12 % defective cells (all six classes).
    """
    return simulate(
        "MoTe2",
        size,
        pixel_size=0.09,
        defect_fraction=0.12,
        optics=Optics(source_fwhm_a=0.6),
        noise=Noise(poisson_lambda=12.0, gaussian_mu=15.0, background=0.08),
        seed=seed,
    )
