"""analyze() orchestration, with ground-truth stand-ins for the two networks.

The stand-ins (conftest.TruthDetector/TruthClassifier) return the simulator's true
hexagons and classes, so these tests check the pipeline's bookkeeping (casting,
deduplication, counts, units, files), not the networks.
"""

import json

import numpy as np
import pytest
from conftest import TruthClassifier, TruthDetector

from napari_tmd_defects.analysis import UNCLASSIFIED, analyze, prepare_image
from napari_tmd_defects.geometry import box_iou
from napari_tmd_defects.runtime import Cancelled
from napari_tmd_defects.simulation import simulate


@pytest.fixture(scope="module")
def sim():
    return simulate(shape=320, pixel_size=0.1, defect_fraction=0.3, seed=4)


def test_counts_area_and_concentrations(sim):
    t = sim.truth
    res = analyze(sim.image, 0.1, detector=TruthDetector(t), classifier=TruthClassifier(t))
    assert res.pixel_size_source == "given"
    # every cast cell is a true cell, reported once
    iou = box_iou(res.boxes, t.cell_box)
    assert np.all(iou.max(axis=1) > 0.99)
    assert len(np.unique(iou.argmax(axis=1))) == res.n_cells
    assert res.n_cells >= 0.9 * t.n_cells
    assert res.area_nm2 == pytest.approx(res.n_cells * 0.866025 * 0.352**2, rel=1e-4)
    for name, n in res.counts().items():
        assert res.concentrations_cm2()[name] == pytest.approx(n / (res.area_nm2 * 1e-14))
    assert res.flagged.sum() == 1 and res.flagged[0]


def test_pixel_size_is_estimated_when_missing(sim):
    t = sim.truth
    res = analyze(sim.image, None, detector=TruthDetector(t), classifier=TruthClassifier(t))
    assert res.pixel_size == pytest.approx(0.1, rel=0.01)
    assert "estimated" in res.pixel_size_source
    wrong = analyze(sim.image, 1.0, detector=TruthDetector(t), classify=False)
    assert any("disagrees with the lattice" in w for w in wrong.warnings)


def test_detect_only_and_recast(sim):
    t = sim.truth
    res = analyze(sim.image, 0.1, detector=TruthDetector(t), classify=False)
    assert np.all(res.labels == UNCLASSIFIED) and set(res.label_names()) == {"unclassified"}
    wider = res.recast(0.7, 0.55)
    assert wider.n_cells <= res.n_cells + 5
    w0 = np.median(res.boxes[:, 2] - res.boxes[:, 0])
    w1 = np.median(wider.boxes[:, 2] - wider.boxes[:, 0])
    assert w1 == pytest.approx(w0 * 0.7 / 0.65, rel=0.02)


def test_corrections_update_counts(sim):
    t = sim.truth
    res = analyze(sim.image, 0.1, detector=TruthDetector(t), classifier=TruthClassifier(t))
    before = res.counts()["V_Mo"]
    k = int(np.flatnonzero(res.labels != 3)[0])
    res.set_label(k, 3)
    assert res.counts()["V_Mo"] == before + 1 and res.corrected[k] and res.confidence[k] == 1
    with pytest.raises(ValueError):
        res.set_label(k, 9)


def test_save_writes_csv_summary_overlay(sim, tmp_path):
    t = sim.truth
    res = analyze(sim.image, 0.1, detector=TruthDetector(t), classifier=TruthClassifier(t))
    paths = res.save(tmp_path, image=sim.image, stem="frame")
    lines = paths["cells"].read_text().splitlines()
    assert lines[0].startswith("x_min,y_min,x_max,y_max,defect,confidence")
    assert len(lines) == res.n_cells + 1
    summ = json.loads(paths["summary"].read_text())
    assert summ["n_cells"] == res.n_cells and summ["counts"] == res.counts()
    assert paths["overlay"].stat().st_size > 1000
    assert not list(tmp_path.glob("*.tmp"))


def test_bad_inputs():
    with pytest.raises(ValueError, match="2-D"):
        prepare_image(np.zeros((2, 3, 4, 5)))
    with pytest.raises(ValueError, match="numeric"):
        prepare_image(np.array([["a"]]))
    img = np.ones((100, 100))
    img[0, 0] = np.nan
    out, warn = prepare_image(img)
    assert np.isfinite(out).all() and "NaN" in warn[0]
    with pytest.raises(ValueError, match="NaN"):
        prepare_image(np.full((10, 10), np.nan))
    # constant, tiny and lattice-free images give empty, valid results (no model needed)
    for im in (np.zeros((128, 128)), np.ones((20, 20))):
        res = analyze(im, 0.1)
        assert res.n_cells == 0 and res.warnings
    noise = np.random.default_rng(0).normal(size=(128, 128))
    res = analyze(noise, None)
    assert res.n_cells == 0 and "no crystal lattice" in res.warnings[0]
    with pytest.raises(ValueError, match="pixel_size"):
        analyze(np.ones((64, 64)), -1.0)


def test_cancel_stops_early(sim):
    with pytest.raises(Cancelled):
        analyze(sim.image, 0.1, detector=TruthDetector(sim.truth), cancel=lambda: True)


@pytest.mark.parametrize("material, rotation", [("MoTe2", 25.0), ("MoTe2", -40.0), ("MoS2", 90.0)])
def test_rotated_lattice_is_turned_to_canonical_and_mapped_back(material, rotation):
    from napari_tmd_defects.classical import LatticeHexagonDetector
    from napari_tmd_defects.evaluation import score_result

    sim = simulate(material, 320, pixel_size=0.1, rotation_deg=rotation, defect_fraction=0.2, seed=3)
    res = analyze(sim.image, 0.1, material, detector=LatticeHexagonDetector(), classify=False)
    assert res.lattice_rotation_deg == pytest.approx(sim.truth.rotation_deg, abs=1.0)
    s = score_result(res, sim.truth)
    assert s.recall > 0.97 and s.precision > 0.97 and s.n_duplicates == 0
    assert s.mean_iou > 0.9
    # re-casting (with the image, as analyze does) works in the turned frame too
    again = res.recast(0.65, 0.5, image=sim.image)
    assert again.n_cells == res.n_cells
    assert np.allclose(again.boxes, res.boxes)


def test_failed_detector_falls_back_to_the_fitted_lattice():
    from napari_tmd_defects.evaluation import score_result

    class Blind:
        card = {"name": "blind"}

        def detect(self, image, pixel_size, material="MoTe2", progress=None, cancel=None):
            return np.zeros((0, 4)), np.zeros(0)

    sim = simulate(shape=320, pixel_size=0.1, defect_fraction=0.2, seed=9)
    res = analyze(sim.image, 0.1, detector=Blind(), classifier=TruthClassifier(sim.truth))
    assert any("taken from the fitted lattice" in w for w in res.warnings)
    s = score_result(res, sim.truth)
    assert s.recall > 0.97 and s.precision > 0.97
