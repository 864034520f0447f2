"""Regenerate the pictures used in the README and docs.

    xvfb-run -a python scripts/make_figures.py

Writes docs/images/*.png from the built-in sample (and, when napari can draw,
a screenshot of the viewer).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from napari_tmd_defects.datasets import sample_image
from napari_tmd_defects.visualization import overlay_rgb

OUT = Path(__file__).resolve().parents[1] / "docs" / "images"


def sample_truth_figure() -> Path:
    sim = sample_image()
    t = sim.truth
    crop = np.s_[0:256, 0:256]
    keep = (t.cell_box[:, 2] < 255.5) & (t.cell_box[:, 3] < 255.5)
    left = overlay_rgb(sim.image[crop], scale=2, legend=False)
    right = overlay_rgb(
        sim.image[crop], boxes=t.cell_box[keep], labels=t.cell_label[keep],
        points={"X": t.cell_x_site[keep], "M": t.cell_m_site[keep]}, scale=2,
    )
    pic = np.concatenate([left, np.full((left.shape[0], 8, 3), 255, np.uint8), right], axis=1)
    path = OUT / "sample_ground_truth.png"
    Image.fromarray(pic).save(path)
    return path


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    print("wrote", sample_truth_figure())


if __name__ == "__main__":
    main()
