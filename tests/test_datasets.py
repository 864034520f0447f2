import json

import numpy as np
import pytest

from napari_tmd_defects.datasets import (
    generate_dataset,
    load_dataset,
    sample_conditions,
    sample_image,
)
from napari_tmd_defects.io import read_image


def test_generate_dataset_layout_and_determinism(tmp_path):
    p1 = generate_dataset(tmp_path / "a", n=3, size=96, seed=7, pixel_size=0.12, n_preview=1)
    generate_dataset(tmp_path / "b", n=3, size=96, seed=7, pixel_size=0.12, n_preview=0, workers=2)
    items = load_dataset(p1)
    assert len(items) == 3
    assert (tmp_path / "a" / "preview" / "00000.png").exists()
    for ia, ib in zip(items, load_dataset(tmp_path / "b")):
        img_a, gt_a = ia.load()
        img_b, gt_b = ib.load()
        assert img_a.shape == (96, 96) and img_a.dtype == np.float32
        assert np.array_equal(img_a, img_b)  # same seed, any number of workers
        assert np.array_equal(gt_a.cell_label, gt_b.cell_label)
    _, meta = read_image(items[0].image_path)
    assert meta["pixel_size_A"] == pytest.approx(0.12, rel=1e-5)


def test_coco_files_match_ground_truth(tmp_path):
    generate_dataset(tmp_path, n=2, size=80, seed=1, n_preview=0)
    coco = json.loads((tmp_path / "coco_cells.json").read_text())
    items = load_dataset(tmp_path)
    _, gt = items[0].load()
    anns = [a for a in coco["annotations"] if a["image_id"] == 1]
    assert len(anns) == gt.n_cells
    x, y, w, h = anns[0]["bbox"]
    b = gt.cell_box[0]
    assert x == pytest.approx(b[0] + 0.5, abs=1e-3) and w == pytest.approx(b[2] - b[0], abs=2e-3)
    assert [c["name"] for c in coco["categories"]][1] == "V_Te1"
    hexes = json.loads((tmp_path / "coco_hexagons.json").read_text())
    assert sum(a["image_id"] == 1 for a in hexes["annotations"]) == len(gt.hex_box)


@pytest.mark.parametrize("preset", ["paper", "realistic", "clean"])
def test_presets(preset):
    kw = sample_conditions(preset, np.random.default_rng(0), pixel_size=(0.05, 0.1), rotation="random")
    assert 0.05 <= kw["pixel_size"] <= 0.1 and 0 <= kw["rotation_deg"] < 360
    if preset == "paper":
        assert 5 <= kw["noise"].poisson_lambda <= 20 and kw["noise"].gaussian_mu == 20
    if preset == "clean":
        assert kw["noise"].poisson_lambda is None


def test_unknown_preset():
    with pytest.raises(ValueError, match="preset"):
        sample_conditions("nice", np.random.default_rng(0))


def test_load_dataset_missing(tmp_path):
    with pytest.raises(FileNotFoundError, match="simulate"):
        load_dataset(tmp_path)


def test_sample_image_has_all_defect_kinds():
    sim = sample_image()
    t = sim.truth
    assert t.material == "MoTe2" and sim.image.shape == (512, 512)
    assert t.n_cells > 150
    counts = t.counts()
    assert counts["Perfect"] > 0.7 * t.n_cells
    assert sum(v > 0 for v in counts.values()) >= 5
