"""Sublattice contrast matching and the other 2H dichalcogenides end to end."""

import numpy as np
import pytest

from napari_tmd_defects.contrast import match_contrast, model_positions
from napari_tmd_defects.evaluation import score_result
from napari_tmd_defects.lattice import find_sites
from napari_tmd_defects.materials import get_material
from napari_tmd_defects.pipeline import analyze
from napari_tmd_defects.simulation import Noise, simulate


def _model(image, material, pixel_size=0.1):
    return find_sites(image, get_material(material).a / pixel_size, material)


def _match(image, material, pixel_size=0.1):
    model = _model(image, material, pixel_size)
    return match_contrast(image, *model_positions(model), model.a_px, material)


@pytest.mark.parametrize("material", ["MoS2", "WSe2"])
def test_match_contrast_makes_the_chalcogen_sublattice_the_bright_one(material):
    sim = simulate(material, shape=320, pixel_size=0.1, defect_fraction=0.0, noise=Noise(None, 0), seed=1)
    t = sim.truth
    xs = np.rint(t.cell_x_site).astype(int)
    ms = np.rint(t.cell_m_site).astype(int)

    def ratio(img):
        return np.median(img[ms[:, 1], ms[:, 0]]) / np.median(img[xs[:, 1], xs[:, 0]])

    assert ratio(sim.image) > 1.5  # metal brighter in these materials
    m = _match(sim.image, material)
    assert m is not None
    assert ratio(m.image) == pytest.approx(m.ratio, rel=0.15)  # the MoTe2 ratio, ~0.34
    # columns stay where they were: the sites of the matched image, read as MoTe2, agree
    again = _model(m.image, "MoTe2")
    d = np.linalg.norm(again.sites.xy[again.sites.role == 0][:, None] - t.cell_x_site[None], axis=-1).min(axis=1)
    assert np.median(d) < 0.05 * t.a_px


def test_match_contrast_keeps_the_half_column_contrast():
    sim = simulate("MoS2", shape=320, pixel_size=0.1, defect_fraction=0.3, noise=Noise(None, 0), seed=2)
    t = sim.truth
    m = _match(sim.image, "MoS2")
    xs = np.rint(t.cell_x_site).astype(int)
    vx = m.image[xs[:, 1], xs[:, 0]]
    full = np.median(vx[t.cell_label == 0])
    half = np.median(vx[t.cell_label == 1])  # V_S1: one S of two missing
    assert half / full == pytest.approx(0.5, abs=0.1)


def test_match_contrast_without_sites_is_none():
    from napari_tmd_defects.sites import SiteModel

    rng = np.random.default_rng(0)
    pos, role, found = model_positions(SiteModel.empty(30.0))
    assert match_contrast(rng.normal(size=(200, 200)), pos, role, found, 30.0, "MoS2") is None


def test_sublattice_positions_put_hollows_between_columns():
    sim = simulate("MoTe2", shape=256, pixel_size=0.1, defect_fraction=0.0, noise=Noise(None, 0), seed=3)
    model = _model(sim.image, "MoTe2")
    pos, role, _ = model_positions(model)
    hol = pos[role == 2]
    cols = np.concatenate([sim.truth.cell_x_site, sim.truth.cell_m_site])
    d = np.linalg.norm(hol[:, None] - cols[None], axis=-1).min(axis=1)
    # a hollow is one bond from its six neighbours
    assert np.median(d) == pytest.approx(sim.truth.a_px / np.sqrt(3), rel=0.05)


@pytest.mark.parametrize("material, rotation", [("MoS2", 0.0), ("WSe2", 21.0), ("MoSe2", -9.0)])
def test_other_materials_end_to_end(material, rotation):
    sim = simulate(material, shape=384, pixel_size=0.09, defect_fraction=0.3, noise=Noise(12, 20),
                   rotation_deg=rotation, seed=6)
    res = analyze(sim.image, 0.09, material=material, device="cpu")
    s = score_result(res, sim.truth)
    assert s.recall > 0.98 and s.precision > 0.98
    assert s.class_accuracy > 0.97
    assert res.class_names[1].startswith("V_" + get_material(material).chalcogen)
    assert any("contrast matched" in w for w in res.warnings)


def test_unmatched_material_is_left_unclassified(monkeypatch):
    import napari_tmd_defects.contrast as contrast

    monkeypatch.setattr(contrast, "match_contrast", lambda *a, **k: None)
    sim = simulate("MoS2", shape=256, pixel_size=0.1, noise=Noise(12, 20), seed=3)
    res = analyze(sim.image, 0.1, material="MoS2", device="cpu")
    assert (res.labels == -1).all()
    assert any("could not be" in w for w in res.warnings)


def test_weak_chalcogen_columns_are_warned_about():
    sim = simulate("WS2", shape=320, pixel_size=0.1, noise=Noise(8, 5), seed=3)
    res = analyze(sim.image, 0.1, material="WS2", device="cpu")
    assert any("columns get only" in w for w in res.warnings)


def test_match_contrast_leaves_the_input_image_as_it_was():
    sim = simulate("WSe2", shape=256, pixel_size=0.1, defect_fraction=0.1, seed=4)
    img = sim.image.copy()
    m = _match(img, "WSe2")
    assert m is not None
    np.testing.assert_array_equal(img, sim.image)  # the remapping works on its own arrays
    assert m.image.dtype == np.float32 and m.image.shape == img.shape
    assert not np.shares_memory(m.image, img)


def test_match_contrast_memory_is_about_two_frames(monkeypatch):
    import tracemalloc

    from napari_tmd_defects import contrast

    monkeypatch.setattr(contrast, "_QUERY_POINTS", 2**14)  # as on a large frame: many query blocks
    sim = simulate("WSe2", shape=256, pixel_size=0.1, defect_fraction=0.1, noise=Noise(None, 0), seed=4)
    model = _model(sim.image, "WSe2")
    big = np.tile(sim.image.astype(np.float32), (4, 4))  # 1024² px; the sites of its first tile suffice
    args = (*model_positions(model), model.a_px, "WSe2")
    tracemalloc.start()
    try:
        m = match_contrast(big, *args)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert m is not None
    # the smoothed frame, then the gain map that becomes the output (no full-grid query arrays,
    # no second gain map): was 3.2 frames
    assert peak < 2.2 * big.nbytes, f"peak {peak / big.nbytes:.2f} frames"
