"""analyze(): the stages in order, with ground-truth stand-ins for the two networks.

The stand-ins (conftest.TruthDetector/TruthClassifier) return the simulator's true
hexagons and classes, so these tests check the pipeline's bookkeeping (sites, cells,
boundaries, counts, units, files, checks), not the networks; the shipped networks are
checked end to end at the bottom.
"""

import json

import numpy as np
import pytest
from conftest import TruthClassifier, TruthDetector

from napari_tmd_defects.analysis import BOUNDARY, UNCLASSIFIED, prepare_image
from napari_tmd_defects.evaluation import score_result
from napari_tmd_defects.pipeline import analyze, check_plausibility, largest_cluster
from napari_tmd_defects.runtime import Cancelled
from napari_tmd_defects.simulation import Boundary, Distortion, Noise, simulate


@pytest.fixture(scope="module")
def sim():
    return simulate(shape=320, pixel_size=0.1, defect_fraction=0.3, seed=4)


def test_cells_counts_area_and_concentrations(sim):
    t = sim.truth
    res = analyze(sim.image, 0.1, detector=TruthDetector(t), classifier=TruthClassifier(t))
    assert res.pixel_size_source == "given"
    s = score_result(res, t)
    assert s.recall > 0.98 and s.precision > 0.98 and s.n_duplicates == 0
    assert s.class_accuracy > 0.98  # the stand-in makes cell 0 uncertain
    # every site lies on its column, or where its neighbours put a missing one
    x_err = np.linalg.norm(res.x_sites[:, None] - t.cell_x_site[None], axis=-1).min(axis=1)
    assert np.median(x_err) < 0.05 * t.a_px and x_err.max() < 0.2 * t.a_px
    assert res.area_nm2 == pytest.approx(res.n_counted * 0.866025 * 0.352**2, rel=1e-4)
    for name, n in res.counts().items():
        assert res.concentrations_cm2()[name] == pytest.approx(n / (res.area_nm2 * 1e-14))
    assert res.flagged[0] and res.support.mean() > 1.5
    assert res.checks["detector_consistent"] and res.checks["hexagons_on_hollows"] > 0.9
    # vacancies without a column were placed from their neighbours, and say so
    assert np.any(res.placed > 0) and not np.all(res.placed > 0)
    assert len(res.domains) == 1 and not res.boundary.any()


def test_pixel_size_is_estimated_when_missing(sim):
    t = sim.truth
    res = analyze(sim.image, None, detector=TruthDetector(t), classifier=TruthClassifier(t))
    assert res.pixel_size == pytest.approx(0.1, rel=0.01)
    assert "estimated" in res.pixel_size_source
    wrong = analyze(sim.image, 1.0, use_detector=False, classify=False)
    assert any("disagrees with the lattice" in w for w in wrong.warnings)
    # the sites come from the image's own lattice, whatever the given pixel size says
    assert wrong.n_cells == res.n_cells


def test_detect_only_and_recast(sim):
    res = analyze(sim.image, 0.1, use_detector=False, classify=False)
    assert np.all(res.labels == UNCLASSIFIED) and set(res.label_names()) == {"unclassified"}
    assert len(res.hexagon_boxes) == 0 and not res.support.any()
    wider = res.recast(0.7, 0.55)
    assert wider.n_cells == res.n_cells and np.allclose(wider.x_sites, res.x_sites)
    w0 = np.median(res.boxes[:, 2] - res.boxes[:, 0])
    w1 = np.median(wider.boxes[:, 2] - wider.boxes[:, 0])
    assert w1 == pytest.approx(w0 * 0.7 / 0.65, rel=0.02)


def test_corrections_update_counts(sim):
    t = sim.truth
    res = analyze(sim.image, 0.1, use_detector=False, classifier=TruthClassifier(t))
    before = res.counts()["V_Mo"]
    k = int(np.flatnonzero(res.labels != 3)[0])
    res.set_label(k, 3)
    assert res.counts()["V_Mo"] == before + 1 and res.corrected[k] and res.confidence[k] == 1
    with pytest.raises(ValueError):
        res.set_label(k, 9)


def test_save_writes_csv_summary_overlay(sim, tmp_path):
    t = sim.truth
    res = analyze(sim.image, 0.1, use_detector=False, classifier=TruthClassifier(t))
    paths = res.save(tmp_path, image=sim.image, stem="frame")
    lines = paths["cells"].read_text().splitlines()
    head = lines[0].split(",")
    assert head[:6] == ["x_min", "y_min", "x_max", "y_max", "defect", "confidence"]
    assert {"domain", "x_placed", "m_placed"} <= set(head)
    assert len(lines) == res.n_cells + 1
    placed = [int(r.split(",")[head.index("x_placed")]) for r in lines[1:]]
    assert sum(placed) == int(np.sum(res.placed & 1))
    summ = json.loads(paths["summary"].read_text())
    assert summ["n_cells"] == res.n_cells and summ["counts"] == res.counts()
    assert summ["n_domains"] == 1 and summ["boundary_length_nm"] == 0
    assert "defect_fraction" in summ["checks"]
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
    with pytest.raises(ValueError, match="NaN"):  # more than half
        prepare_image(np.where(np.arange(100)[:, None] < 60, np.nan, img))
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
def test_rotated_lattices_keep_their_cells(material, rotation):
    sim = simulate(material, 320, pixel_size=0.1, rotation_deg=rotation, defect_fraction=0.2, seed=3)
    res = analyze(sim.image, 0.1, material, use_detector=False, classify=False)
    assert res.lattice_rotation_deg == pytest.approx(sim.truth.rotation_deg, abs=1.5)
    s = score_result(res, sim.truth)
    assert s.recall > 0.97 and s.precision > 0.97 and s.n_duplicates == 0
    assert s.mean_iou > 0.9
    # each cell's crop follows its lattice: outlines are the rotated cell rectangle
    q = res.cell_outlines()
    edge = np.linalg.norm(q[:, 1] - q[:, 0], axis=1)
    assert np.median(edge) == pytest.approx((0.5 + 6 / 14) * sim.truth.a_px, rel=0.03)


def test_a_detector_that_returns_garbage_is_caught(sim):
    class Garbage:
        card = {"name": "random boxes"}

        def detect(self, image, pixel_size, material="MoTe2", progress=None, cancel=None):
            r = np.random.default_rng(0)
            xy = r.uniform(0, 300, (150, 2))
            return np.concatenate([xy, xy + 40], axis=1), np.ones(150)

    t = sim.truth
    res = analyze(sim.image, 0.1, detector=Garbage(), classifier=TruthClassifier(t))
    assert any("does not fit the columns" in w for w in res.warnings)
    assert res.checks["detector_consistent"] is False and not res.support.any()
    # the cells come from the columns, so they are all still there
    assert score_result(res, t).recall > 0.98


def test_grain_boundary_cells_are_boundary_not_defects():
    sim = simulate("MoTe2", 384, pixel_size=0.1, rotation_deg=5, defect_fraction=0.1, seed=11,
                   boundaries=[Boundary("grain", angle_deg=30, misorientation_deg=21)])
    t = sim.truth
    res = analyze(sim.image, 0.1, use_detector=False, classifier=TruthClassifier(t))
    assert len(res.domains) == 2
    rots = sorted(d["rotation_deg"] for d in res.domains)
    assert rots[1] - rots[0] == pytest.approx(21, abs=2)
    assert res.boundary.sum() > 5 and res.n_counted == res.n_cells - res.boundary.sum()
    assert res.boundary_length_nm == pytest.approx(t.boundary_length_px * 0.01, rel=0.3)
    s = score_result(res, t)
    assert s.boundary_recall > 0.9 and s.boundary_precision > 0.9
    assert np.all(s.site_recall()[~np.isnan(s.site_recall())] > 0.9)
    assert s.largest_fake_cluster <= 2
    assert any("domains" in w for w in res.warnings)


def test_distorted_frame_keeps_one_domain_and_its_sites():
    dist = Distortion(drift_px=(20, -8), bend_px=4.0, flyback_px=8.0, row_jitter_px=0.8)
    sim = simulate("WSe2", 448, pixel_size=0.09, rotation_deg=-17, defect_fraction=0.1, noise=Noise(15, 10),
                   distortion=dist, seed=5)
    res = analyze(sim.image, 0.09, "WSe2", use_detector=False, classifier=TruthClassifier(sim.truth))
    s = score_result(res, sim.truth)
    assert len(res.domains) == 1 and not res.boundary.any()
    assert s.recall > 0.97 and s.precision > 0.97 and s.class_accuracy > 0.99


def test_plausibility_guards():
    # a same-class cluster of 20 adjacent cells is found and flagged
    xy = np.stack(np.meshgrid(np.arange(10) * 30.0, np.arange(5) * 26.0), -1).reshape(-1, 2)
    lab = np.zeros(len(xy), int)
    lab[:20] = 3
    assert largest_cluster(xy, lab, 30.0) == (20, 3)
    sim = simulate(shape=256, pixel_size=0.1, defect_fraction=0.0, seed=1)
    res = analyze(sim.image, 0.1, use_detector=False, classify=False)
    from napari_tmd_defects.pipeline import Frame

    frame = Frame(image=sim.image, material="MoTe2", pixel_size=0.1, pixel_size_source="given",
                  a_px=sim.truth.a_px, model=res.sites, noise_sigma=1.0)
    n = res.n_cells
    labels = np.full(n, 3)
    flagged = np.zeros(n, bool)
    checks = check_plausibility(frame, labels, flagged)
    assert checks["defect_fraction"] == 1.0 and checks["largest_same_class_cluster"] == n
    assert flagged.all()
    assert any("called defective" in w for w in frame.warnings)
    assert any("adjacent cells are all V_Mo" in w for w in frame.warnings)
    assert checks["bright_sublattice_brighter"] == 1.0


def test_boundary_label_is_not_a_class(sim):
    res = analyze(sim.image, 0.1, use_detector=False, classifier=TruthClassifier(sim.truth))
    res.labels[:3] = BOUNDARY
    assert res.label_names()[:3] == ["boundary"] * 3
    assert sum(res.counts().values()) == res.n_cells - 3 - int(np.sum(res.labels == UNCLASSIFIED))
    assert res.n_counted == res.n_cells - 3


@pytest.mark.slow
def test_shipped_networks_classify_mote2_end_to_end():
    sim = simulate("MoTe2", 384, pixel_size=0.1, rotation_deg=12, defect_fraction=0.3, noise=Noise(12, 20), seed=21)
    res = analyze(sim.image, 0.1, device="cpu")
    s = score_result(res, sim.truth)
    assert s.recall > 0.97 and s.precision > 0.97
    assert s.class_accuracy > 0.98
    assert res.checks["detector_consistent"]
    assert np.all(s.site_recall() > 0.9) and np.all(s.site_precision() > 0.9)


def test_chalcogens_the_frame_cannot_resolve_are_unresolved_not_vacancies():
    # WS2 at a low dose: the S columns sit in the noise
    sim = simulate("WS2", 384, pixel_size=0.1, defect_fraction=0.2, noise=Noise(3, 10), seed=7)
    t = sim.truth
    res = analyze(sim.image, 0.1, "WS2", use_detector=False, classifier=TruthClassifier(t))
    assert res.checks["single_chalcogen_vacancies"] == "unresolved"
    assert res.x_unresolved.any()
    assert res.counts()["V_S1"] == 0 and res.counts()["V_S1+V_W"] == 0
    assert any("too noisy to read" in w for w in res.warnings)
    assert "unresolved" in res.table()["x_state"]
    # a clean MoTe2 frame resolves everything
    clean = simulate("MoTe2", 320, pixel_size=0.1, defect_fraction=0.2, noise=Noise(30, 5), seed=7)
    ok = analyze(clean.image, 0.1, use_detector=False, classifier=TruthClassifier(clean.truth))
    assert ok.checks["single_chalcogen_vacancies"] == "resolved" and not ok.x_unresolved.any()


def test_classes_that_contradict_the_column_intensities_are_flagged():
    sim = simulate("MoTe2", 320, pixel_size=0.1, defect_fraction=0.0, noise=Noise(30, 5), seed=8)
    t = sim.truth

    class Liar(TruthClassifier):
        """Calls every tenth cell V_Te1 (one chalcogen missing) though all are perfect."""

        def predict(self, *a, **k):
            p = super().predict(*a, **k)
            p[::10] = [0.02, 0.9, 0.02, 0.02, 0.02, 0.02]
            return p

    res = analyze(sim.image, 0.1, use_detector=False, classifier=Liar(t))
    assert res.counts()["V_Te1"] == 0  # not counted: the columns are full
    assert res.checks["cells_contradicting_image"] >= res.n_cells // 10 - 2
    assert res.flagged[::10].mean() > 0.8
    assert any("contradict the column intensities" in w for w in res.warnings)


def test_a_metal_vacancy_called_on_a_standing_metal_column_is_not_counted():
    sim = simulate("MoTe2", 320, pixel_size=0.1, defect_fraction=0.0, noise=Noise(30, 5), seed=8)
    t = sim.truth

    class Liar(TruthClassifier):
        """Calls every tenth cell V_Te1+V_Mo though all are perfect."""

        def predict(self, *a, **k):
            p = super().predict(*a, **k)
            p[::10] = [0.02, 0.02, 0.02, 0.02, 0.9, 0.02]
            return p

    res = analyze(sim.image, 0.1, use_detector=False, classifier=Liar(t))
    counts = res.counts()
    assert counts["V_Mo"] == counts["V_Te1+V_Mo"] == counts["V_Te1"] == 0
    assert res.flagged[::10].mean() > 0.8
    assert any("Mo vacancies called on a standing Mo column" in w for w in res.warnings)
    # true metal vacancies stay
    sim = simulate("MoTe2", 320, pixel_size=0.1, defect_fraction=0.3, class_weights=[0, 0, 1, 0, 0],
                   noise=Noise(30, 5), seed=9)
    res = analyze(sim.image, 0.1, use_detector=False, classifier=TruthClassifier(sim.truth))
    assert res.counts()["V_Mo"] >= 0.95 * sim.truth.counts()["V_Mo"]


def test_a_sure_metal_vacancy_on_a_clearly_full_column_is_not_counted():
    """A classifier sure (0.995) of a metal vacancy in every cell of a low-dose frame is
    overruled where the columns read full; the true vacancies keep their call."""
    sim = simulate("MoTe2", 320, pixel_size=0.1, defect_fraction=0.3, class_weights=[0, 0, 1, 0, 0],
                   noise=Noise(6, 20), seed=9)
    t = sim.truth

    class SureLiar(TruthClassifier):
        """Calls every cell V_Mo with probability 0.995, vacant or not."""

        def predict(self, *a, **k):
            p = super().predict(*a, **k)
            p[:] = [0.001, 0.001, 0.001, 0.995, 0.001, 0.001]
            return p

    res = analyze(sim.image, 0.1, use_detector=False, classifier=SureLiar(t))
    n_true = t.counts()["V_Mo"]
    assert n_true >= 5
    assert n_true * 0.9 <= res.counts()["V_Mo"] <= n_true * 1.1 + 1  # not every cell


def test_a_pixel_size_off_the_lattice_is_replaced_unless_trusted(sim):
    from napari_tmd_defects.pipeline import PIXEL_SIZE_TOLERANCE, check_pixel_size

    assert PIXEL_SIZE_TOLERANCE == 0.10
    chk = check_pixel_size(sim.image, "MoTe2", 1.0)
    assert chk.disagrees and chk.lattice == pytest.approx(0.1, rel=0.01) and chk.deviation == pytest.approx(9, rel=0.02)
    assert not check_pixel_size(sim.image, "MoTe2", 0.105).disagrees
    wrong = analyze(sim.image, 1.0, use_detector=False, classify=False)  # 10x off: the lattice wins
    assert wrong.pixel_size == pytest.approx(0.1, rel=0.01) and wrong.pixel_size_source == "lattice"
    loud = [w for w in wrong.warnings if w.startswith("PIXEL SIZE REPLACED")]
    assert len(loud) == 1 and "1 Å/px" in loud[0] and "0.1 Å/px" in loud[0] and "--trust-pixel-size" in loud[0]
    assert wrong.checks["pixel_size_given_A"] == 1.0
    assert wrong.checks["pixel_size_lattice_A"] == pytest.approx(0.1, rel=0.01)
    kept = analyze(sim.image, 1.0, use_detector=False, classify=False, trust_pixel_size=True)
    assert kept.pixel_size == 1.0 and kept.pixel_size_source == "given"
    assert any("disagrees with the lattice" in w and "trust_pixel_size" in w for w in kept.warnings)
    assert kept.n_cells == wrong.n_cells  # the sites follow the image either way
    # within 10 %: the value is used as it is, from wherever it came
    near = analyze(sim.image, 0.105, use_detector=False, classify=False, pixel_size_source="metadata")
    assert near.pixel_size == 0.105 and near.pixel_size_source == "metadata"
    assert not any("PIXEL SIZE" in w for w in near.warnings)
    with pytest.raises(ValueError, match="pixel_size_source"):
        analyze(sim.image, 0.1, pixel_size_source="lattice")


@pytest.mark.parametrize("material", ["MoTe2", "WSe2"])
def test_a_pixel_size_given_twice_too_large_is_not_read_from_a_higher_ring(material):
    # 1.6-2.4x too large puts the expected lattice near the honeycomb's {110} (a / sqrt 3)
    # or {200} (a / 2) ring: the image's own lattice, whose rings stand out, wins
    from napari_tmd_defects.pipeline import check_pixel_size

    img = simulate(material, shape=320, pixel_size=0.1, defect_fraction=0.1, seed=5).image
    for factor in (1.7, 1.9, 2.0, 2.3):
        chk = check_pixel_size(img, material, 0.1 * factor)
        assert chk.disagrees and chk.lattice == pytest.approx(0.1, rel=0.01), factor
    res = analyze(img, 0.2, material, use_detector=False, classify=False)
    assert res.pixel_size == pytest.approx(0.1, rel=0.01) and res.n_cells > 50


def test_a_wrong_pixel_size_does_not_pull_the_lattice_to_a_weaker_ring():
    # two domains and scan distortion: with the pixel size given half the true one, the
    # expectation picked a weak ring that refined 43 % off; a lattice found off the
    # expectation is the frame's strongest, as without a pixel size
    from conftest import structure_stress_frame

    from napari_tmd_defects.pipeline import check_pixel_size

    sim, ps = structure_stress_frame("WS2", 2, 5)
    free = check_pixel_size(sim.image, "WS2", None).lattice
    assert free == pytest.approx(ps, rel=0.05)
    assert check_pixel_size(sim.image, "WS2", 0.5 * ps).lattice == pytest.approx(free, rel=1e-6)



def test_an_undecided_metal_reading_on_a_found_column_does_not_count_a_vacancy(monkeypatch):
    """A metal vacancy the classifier is sure of (0.997) is not counted where a column peak
    stands on the site and its reading is ``unresolved`` without favouring an empty site;
    it stays where no column was found there, or where the reading favours empty."""
    import napari_tmd_defects.states as states_mod
    from napari_tmd_defects.materials import N_CLASSES
    from napari_tmd_defects.pipeline import MIN_EMPTY_ON_FOUND_COLUMN, locate_cells, read_states

    sim = simulate("MoTe2", 320, pixel_size=0.1, defect_fraction=0.0, noise=Noise(30, 5), seed=8)
    frame = locate_cells(sim.image, 0.1, "MoTe2")
    model = frame.model
    c = model.cells
    inner = np.flatnonzero(~c.boundary)
    found = inner[~model.sites.placed[c.m[inner]]]
    assert len(found) >= 40
    undecided, placed, favoured = found[:10], found[10:20], found[20:30]
    model.sites.placed[c.m[placed]] = True  # as if no peak had been found there
    real = states_mod.read_site_states

    def reading(m, material, *a, **k):
        st = real(m, material, *a, **k)
        for cells, p in ((undecided, 0.5), (placed, 0.5), (favoured, MIN_EMPTY_ON_FOUND_COLUMN + 0.05)):
            st.state[c.m[cells]] = "unresolved"
            st.empty_probability[c.m[cells]] = p
        return st

    monkeypatch.setattr(states_mod, "read_site_states", reading)
    labels = np.zeros(len(c), int)
    calls = np.r_[undecided, placed, favoured]
    labels[calls] = 3  # V_M
    probs = np.full((len(c), N_CLASSES), 0.0006)
    probs[np.arange(len(c)), labels] = 0.997
    flagged = np.zeros(len(c), bool)
    out, changed, _ = read_states(frame, labels, flagged, probs)
    assert np.all(out[undecided] == 0) and np.all(changed[undecided]) and np.all(flagged[undecided])
    assert np.all(out[placed] == 3) and np.all(out[favoured] == 3)
    assert np.all(flagged[placed])  # undecided readings are flagged for review either way


def test_a_found_peak_off_its_site_does_not_veto_a_metal_vacancy(monkeypatch):
    """The found-column rule needs the peak on the site: one farther from where its
    neighbours put it than the frame's metal columns scatter (a noise maximum next to an
    empty site) leaves a sure metal vacancy with an undecided reading counted."""
    import napari_tmd_defects.states as states_mod
    from napari_tmd_defects.materials import N_CLASSES
    from napari_tmd_defects.pipeline import locate_cells, read_states

    sim = simulate("MoTe2", 320, pixel_size=0.1, defect_fraction=0.0, noise=Noise(30, 5), seed=8)
    frame = locate_cells(sim.image, 0.1, "MoTe2")
    model = frame.model
    c, s = model.cells, model.sites
    inner = np.flatnonzero(~c.boundary)
    found = inner[~s.placed[c.m[inner]]]
    on, off = found[:10], found[10:20]
    s.xy[c.m[off]] = s.fitted[c.m[off]] + [0.12 * model.a_px, 0.0]  # peak 0.12 a off its site
    real = states_mod.read_site_states

    def reading(m, material, *a, **k):
        st = real(m, material, *a, **k)
        st.state[c.m[found[:20]]] = "unresolved"
        st.empty_probability[c.m[found[:20]]] = 0.5
        return st

    monkeypatch.setattr(states_mod, "read_site_states", reading)
    labels = np.zeros(len(c), int)
    labels[found[:20]] = 3  # V_M
    probs = np.full((len(c), N_CLASSES), 0.0006)
    probs[np.arange(len(c)), labels] = 0.997
    out, changed, _ = read_states(frame, labels, np.zeros(len(c), bool), probs)
    assert np.all(out[on] == 0) and np.all(changed[on])
    assert np.all(out[off] == 3) and not changed[off].any()


def test_a_metal_site_read_vacant_where_no_column_was_found_is_a_vacancy_the_classifier_missed():
    """A binary's metal site with no column found and a reading of ``vacant`` is counted as a
    metal vacancy though the classifier called the cell perfect (flagged); a site read vacant
    where a column was found or next to vacuum, and every other site, keep the classifier's
    class."""
    from napari_tmd_defects.materials import N_CLASSES
    from napari_tmd_defects.pipeline import locate_cells, read_states
    from napari_tmd_defects.states import read_site_states

    sim = simulate("MoTe2", 320, pixel_size=0.1, defect_fraction=0.3, class_weights=[0, 0, 1, 0, 0],
                   noise=Noise(30, 5), seed=9)
    frame = locate_cells(sim.image, 0.1, "MoTe2")
    model = frame.model
    c, s = model.cells, model.sites
    inner = np.flatnonzero(~c.boundary)
    st = read_site_states(model, "MoTe2")
    vacant = inner[(st.state[c.m[inner]] == "vacant") & s.placed[c.m[inner]]]
    assert len(vacant) >= 5
    s.placed[c.m[vacant[:2]]] = False  # as if a column peak had been found there
    frame.vacuum = np.zeros(sim.image.shape, bool)  # a hole 0.6 a from the third one
    x, y = np.rint(s.xy[c.m[vacant[2]]] + [0.6 * model.a_px, 0]).astype(int)
    frame.vacuum[y - 2:y + 3, x - 2:x + 3] = True
    labels = np.zeros(len(c), int)  # every cell called perfect
    probs = np.full((len(c), N_CLASSES), 0.0006)
    probs[:, 0] = 0.997
    flagged = np.zeros(len(c), bool)
    out, changed, info = read_states(frame, labels, flagged, probs)
    assert info["metal_vacancies_read_not_classified"] == np.sum(changed)
    assert np.all(out[vacant[:3]] == 0) and not changed[vacant[:3]].any()
    far = vacant[3:][np.hypot(*(s.xy[c.m[vacant[3:]]] - [x, y]).T) > 1.5 * model.a_px]  # from the hole
    assert len(far) >= 2
    assert np.all(out[far] == 3) and np.all(changed[far]) and np.all(flagged[far])
    others = np.setdiff1d(inner, vacant)
    assert np.all(out[others] == labels[others])


def test_float32_frames_are_read_in_place_not_copied():
    img = np.random.default_rng(1).normal(100, 5, (64, 64)).astype(np.float32)
    view, _ = prepare_image(img, copy=False)
    assert np.shares_memory(view, img) and not view.flags.writeable  # no stage can write into the caller's data
    with pytest.raises(ValueError):
        view[0, 0] = 0
    # 8/16-bit counts (exact in float32) are read as they are, also not writable
    for counts in (img.astype(np.uint16), img.astype(np.uint8), img.astype(np.int16)):
        out, _ = prepare_image(counts, copy=False)
        assert out.dtype == counts.dtype and np.shares_memory(out, counts) and not out.flags.writeable
    # other types, strided views and the default: a float32 array of its own
    for other in (img.astype(np.int32), img.astype(np.float64), img[:, ::2], img.astype(np.uint16)[:, ::2]):
        out, _ = prepare_image(other, copy=False)
        assert out.dtype == np.float32 and not np.shares_memory(out, img) and out.flags.writeable
    assert not np.shares_memory(prepare_image(img)[0], img)
    bad = img.copy()
    bad[3, 3] = np.nan
    out, warn = prepare_image(bad, copy=False)
    assert np.isfinite(out).all() and np.isnan(bad[3, 3]) and "NaN" in warn[0]


@pytest.mark.parametrize("material, rotation, dtype", [("MoTe2", 17.0, np.uint16), ("MoSe2", 0.0, np.uint8)])
def test_counts_are_analysed_without_a_float32_copy_and_give_the_copys_results(material, rotation, dtype):
    """An 8/16-bit frame goes through every stage as it is (turned detector crops, the
    contrast matching of another material, the classifier's bands, an 8-bit export's
    clipped columns): the results of its float32 copy, to the bit."""
    sim = simulate(material, 320, pixel_size=0.1, defect_fraction=0.08, rotation_deg=rotation, seed=5)
    img = sim.image - sim.image.min()
    counts = np.rint(img * (np.iinfo(dtype).max * (1.15 if dtype == np.uint8 else 0.9) / img.max()))
    counts = np.minimum(counts, np.iinfo(dtype).max).astype(dtype)  # the 8-bit export cuts its brightest columns
    a = analyze(counts, 0.1, material=material, device="cpu")
    b = analyze(counts.astype(np.float32), 0.1, material=material, device="cpu")
    assert a.n_cells > 50 and a.hexagon_boxes is not None and len(a.hexagon_boxes) > 20
    for name in ("labels", "confidence", "boxes", "support", "x_sites", "m_sites", "x_unresolved"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name), err_msg=name)
    np.testing.assert_array_equal(a.site_states.state, b.site_states.state)
    np.testing.assert_array_equal(a.site_states.z_eff, b.site_states.z_eff)
    np.testing.assert_array_equal(a.site_states.clipped, b.site_states.clipped)
    assert a.noise == b.noise and a.warnings == b.warnings


def test_a_single_chalcogen_vacancy_on_a_column_read_empty_is_doubtful_not_counted(monkeypatch):
    """A binary's V_X1 stands where the column reads one atom; where the reading finds the
    column empty the count is disputed: not counted, flagged, the chalcogen unresolved."""
    import napari_tmd_defects.states as states_mod
    from napari_tmd_defects.materials import N_CLASSES
    from napari_tmd_defects.pipeline import locate_cells, read_states

    sim = simulate("MoTe2", 320, pixel_size=0.1, defect_fraction=0.0, noise=Noise(30, 5), seed=8)
    frame = locate_cells(sim.image, 0.1, "MoTe2")
    c = frame.model.cells
    inner = np.flatnonzero(~c.boundary)
    empty, one = inner[:10], inner[10:20]
    real = states_mod.read_site_states

    def reading(m, material, *a, **k):
        st = real(m, material, *a, **k)
        for cells, atoms, name in ((empty, 0, "vacant"), (one, 1, "Te")):
            st.state[c.x[cells]], st.atoms[c.x[cells]] = name, atoms
            st.count_probability[c.x[cells]] = 0.99
            st.empty_probability[c.x[cells]] = 0.99 if atoms == 0 else 0.005
        return st

    monkeypatch.setattr(states_mod, "read_site_states", reading)
    labels = np.zeros(len(c), int)
    labels[np.r_[empty, one]] = 1  # V_X1
    probs = np.full((len(c), N_CLASSES), 0.0006)
    probs[np.arange(len(c)), labels] = 0.997
    flagged, x_unres = np.zeros(len(c), bool), np.zeros(len(c), bool)
    out, changed, info = read_states(frame, labels, flagged, probs, x_unres)
    assert np.all(out[empty] == 0) and np.all(flagged[empty]) and np.all(x_unres[empty])
    assert np.all(out[one] == 1) and not x_unres[one].any() and not changed[one].any()
    assert info["chalcogen_counts_disputed"] == len(empty)


def _reading_frame(sigma_x: float, empty_x: float, sigma_m: float = 0.08):
    """Site states of four cells (as the column reading leaves them) on a frame whose levels
    are as far apart as ``sigma_x`` / ``empty_x`` say."""
    from types import SimpleNamespace

    st = SimpleNamespace(count_probability=np.array([0.99, 0.99, 0.6, 0.99]),
                         empty_probability=np.array([0.001, 0.99, 0.3, 0.001]),
                         sigma={"X": sigma_x, "M": sigma_m}, empty_level={"X": empty_x, "M": 0.0})
    cells = SimpleNamespace(m=np.array([0, 1, 0, 0]), x=np.array([3, 1, 2, 3]), boundary=np.zeros(4, bool))
    return st, cells


def test_reading_confidence_is_the_tempered_probability_of_the_class_counts():
    """With one fixed temperature, the cell confidence from the column reading is the
    probability of the class's metal count times the chalcogen column's, each with its
    log-odds tempered."""
    from napari_tmd_defects.pipeline import READING_TEMPERATURE, reading_confidence

    st, cells = _reading_frame(0.1, 0.0)
    labels = np.array([0, 5, 0, -1])  # Perfect; V_M + V_X2; Perfect on a doubtful column; no class
    conf = reading_confidence(st, cells, labels, temperature=READING_TEMPERATURE)
    t = lambda p: 1 / (1 + ((1 - p) / p) ** (1 / READING_TEMPERATURE))  # noqa: E731
    assert conf == pytest.approx([t(0.999) * t(0.99), t(0.99) * t(0.99), t(0.999) * t(0.6), 0.0])
    assert 1.0 < READING_TEMPERATURE and np.all(conf[:3] < np.array([0.999 * 0.99, 0.99 * 0.99, 0.999 * 0.6]))
    assert reading_confidence(st, cells, labels, temperature=1.0) == pytest.approx(
        [0.999 * 0.99, 0.99 * 0.99, 0.999 * 0.6, 0.0])


def test_reading_confidence_divides_the_log_odds_by_the_frames_temperature():
    """The calibration map: the log-odds over ``exp(a · [1, q])`` with ``q`` the frame's
    features (level separation per sublattice, doubtful columns, empty level fitted)."""
    from napari_tmd_defects.pipeline import READING_FEATURES, reading_confidence, reading_features

    st, cells = _reading_frame(0.2, 0.1)
    q = reading_features(st, cells)
    assert len(q) == len(READING_FEATURES)
    assert q == pytest.approx([np.log(0.9 / 0.2), np.log(1 / 0.08), 1 / 3, 1.0])  # X columns 1-3, one at 0.6
    cal = {"temperature": [np.log(2.0) - 0.5 * q[0] - q[2], 0.5, 0.0, 1.0, 0.0]}  # T = 2
    conf = reading_confidence(st, cells, np.array([0, 5, 0, -1]), calibration=cal)
    t = lambda p: 1 / (1 + ((1 - p) / p) ** 0.5)  # noqa: E731
    assert conf == pytest.approx([t(0.999) * t(0.99), t(0.99) * t(0.99), t(0.999) * t(0.6), 0])
    st.empty_level["X"] = 0.0  # no empty level fitted: a feature of its own
    assert reading_features(st, cells)[3] == 0.0


def test_reading_confidence_is_lower_on_a_frame_that_separates_its_levels_worse():
    """The shipped calibration: the same readings get less confidence on a noisier frame
    (full chalcogen columns spread wider) and less again on a blurred one whose empty
    columns the fit could not place (so raised ones read as full); the calibration file
    fits the code's features."""
    from napari_tmd_defects.pipeline import load_reading_calibration, reading_confidence

    cal = load_reading_calibration()
    assert cal is not None and cal["generated_by"] == "benchmarks/calibrate_reading.py"
    labels = np.array([0, 5, 0, -1])
    sharp = reading_confidence(*_reading_frame(0.06, 0.02), labels)
    noisier = reading_confidence(*_reading_frame(0.25, 0.02), labels)
    blurred = reading_confidence(*_reading_frame(0.4, 0.0), labels)
    assert np.all(noisier[:3] < sharp[:3] - 0.01) and np.all(blurred[:3] < noisier[:3] - 0.01)
    assert sharp[3] == noisier[3] == blurred[3] == 0 and np.all((blurred[:3] > 0.3) & (sharp[:3] < 1))


@pytest.mark.slow
def test_sampled_hexagons_check_each_domain_on_one_tile():
    # two grains at 0.15 Å/px: a sample tile (~260 px here) covers part of each grain
    sim = simulate("MoTe2", 640, pixel_size=0.15, rotation_deg=5, defect_fraction=0.1, noise=Noise(12, 20), seed=11,
                   boundaries=[Boundary("grain", angle_deg=30, misorientation_deg=21)])
    full = analyze(sim.image, 0.15, device="cpu", classify=False)
    part = analyze(sim.image, 0.15, device="cpu", classify=False, hexagons="sample")
    # the cells come from the sites either way
    np.testing.assert_array_equal(part.boxes, full.boxes)
    wins = part.checks["hexagon_windows"]
    assert len(wins) == 2 and "hexagon_windows" not in full.checks
    checked = part.support >= 0
    assert 0.1 < checked.mean() < 0.5 and np.all(part.support[~checked] == -1)
    for d in np.unique(part.domain[~part.boundary]):  # each grain has cells checked by its tile
        assert checked[part.domain == d].sum() >= 30
    assert all(d.hexagons_on_hollows >= 0.9 for d in part.sites.domains)  # each grain's hollows voted on
    # where a tile looked, it found what the whole-frame search found
    assert np.mean(part.support[checked] == full.support[checked]) > 0.95
    assert part.checks["detector_consistent"] and part.checks["cells_with_hexagon"] > 0.9
    assert len(part.hexagon_boxes) < 0.8 * len(full.hexagon_boxes)
    with pytest.raises(ValueError, match="hexagons must be one of"):
        analyze(sim.image, 0.15, classify=False, hexagons="some")


def test_networks_are_loaded_once_per_weights_file_and_again_when_it_changes(tmp_path):
    import shutil

    from napari_tmd_defects.pipeline import _resolve_model
    from napari_tmd_defects.runtime import WeightsError, default_weights

    assert _resolve_model(None, "detector", "cpu") is _resolve_model(None, "detector", "cpu")
    small = _resolve_model("small", "classifier", "cpu")
    assert small is _resolve_model("small", "classifier", "cpu")
    assert small is not _resolve_model(None, "classifier", "cpu")
    given = object()  # a model object passes as it is
    assert _resolve_model(given, "classifier", "cpu") is given
    f = tmp_path / "mine.pt"
    shutil.copy(default_weights("classifier_small"), f)
    mine = _resolve_model(f, "classifier", "cpu")
    assert mine is _resolve_model(str(f), "classifier", "cpu") and mine is not small
    f.write_bytes(b"not a weights file")  # written since: read again, and found corrupt
    with pytest.raises(WeightsError):
        _resolve_model(f, "classifier", "cpu")
    f.unlink()
    with pytest.raises(WeightsError):
        _resolve_model(f, "classifier", "cpu")


def test_a_nan_border_reads_as_vacuum():
    # an aligned stack's border: NaN over 30 % of the frame, filled dark, its cells left out
    sim = simulate(shape=384, pixel_size=0.09, defect_fraction=0.1, noise=Noise(12, 20), seed=6)
    img = sim.image.astype(np.float32)
    img[:, :100] = np.nan
    img[:40] = np.nan
    out, warn = prepare_image(img)
    assert np.isfinite(out).all() and out[0, 0] == pytest.approx(np.nanpercentile(img, 1.0))
    assert "aligned stack" in warn[0]
    ref = analyze(sim.image, 0.09, device="cpu")
    res = analyze(img, 0.09, device="cpu")
    assert res.vacuum_fraction > 0.25
    assert 0.5 * ref.n_cells < res.n_cells < 0.8 * ref.n_cells
    s = score_result(res, sim.truth)
    assert s.precision > 0.99 and s.class_accuracy > 0.98


def test_the_lattice_is_sought_without_a_nan_border():
    from napari_tmd_defects.pipeline import _finite_window

    missing = np.zeros((400, 500), bool)
    missing[:50] = True  # top rows and left columns: an aligned stack's border
    missing[:, :100] = True
    assert _finite_window(missing) == (slice(50, 400), slice(100, 500))
    assert _finite_window(np.ones((400, 500), bool)) is None
    assert _finite_window(np.zeros((400, 500), bool)) == (slice(0, 400), slice(0, 500))


def test_columns_far_from_the_material_s_ratio_are_warned_of():
    """A WS2 frame analysed as WSe2: its W columns stand ~5x its S2 columns, WSe2's at 1.25x
    (calibrated): the ratio is reported and warned of; analysed as WS2 it is not."""
    from napari_tmd_defects.pipeline import MAX_COLUMN_RATIO_FACTOR, column_ratio_range

    sim = simulate("WS2", 288, 0.1, defect_fraction=0.03, seed=3, noise=Noise(20, 10))
    right, wrong = (analyze(sim.image, 0.1, m, use_detector=False) for m in ("WS2", "WSe2"))
    lo, hi = column_ratio_range("WS2")
    assert lo / MAX_COLUMN_RATIO_FACTOR < right.checks["metal_chalcogen_ratio"] < hi * MAX_COLUMN_RATIO_FACTOR
    assert not any("far from" in w for w in right.warnings)
    assert any("far from" in w and "bilayer" in w for w in wrong.warnings)
    assert column_ratio_range("(Mo,W)(S,Se)2") == pytest.approx((column_ratio_range("MoSe2")[0],
                                                                 column_ratio_range("WS2")[1]))


def test_a_nan_border_does_not_set_the_lattice():
    """The lattice of a frame with a NaN border (filled flat) is sought in the window without
    it first: its straight edges mimic reflections (a real MoS2 frame with one read a
    lattice constant √3 too short, then no cell; so does this frame: 0.0733 Å/px, 72 cells).
    The pixel size estimated with the border is the one without it."""
    sim = simulate("MoS2", 480, 0.127, defect_fraction=0.02, seed=5, noise=Noise(8, 20), rotation_deg=0.0)
    img = sim.image.astype(np.float32)
    bordered = img.copy()
    bordered[:, :96] = np.nan  # as benchmarks/export_artefacts.py's NaN border
    bordered[:60] = np.nan
    a, b = (analyze(x, None, "MoS2", use_detector=False) for x in (img, bordered))
    assert b.pixel_size == pytest.approx(a.pixel_size, rel=0.02)
    assert b.n_cells > 0.5 * a.n_cells


def test_lattice_of_two_grains_without_a_pixel_size_from_what_the_tiles_agree_on():
    # two grains 34° apart, bent, with drift and flyback: the whole frame's reflections are
    # too weak for a lattice without a pixel size to expect one (strength 3.4 < 4.5); its
    # half-size tiles each show one clearly and agree on it
    from napari_tmd_defects.pipeline import check_pixel_size
    from napari_tmd_defects.simulation import Optics

    sim = simulate("Mo0.5W0.5S2", 384, pixel_size=0.1082, rotation_deg=173.8, defect_fraction=0.12, seed=5,
                   optics=Optics(convergence_mrad=28.9, defocus_a=17.2, astigmatism_a=4.5, astigmatism_deg=137.8,
                                 source_fwhm_a=0.72, z_exponent=1.86),
                   noise=Noise(poisson_lambda=37.8, gaussian_mu=6.2, background=0.27, quantize_8bit=True),
                   distortion=Distortion(row_jitter_corr=2.5, drift_px=(12.2, 6.8), bend_px=5.06, bend_period=1.48,
                                         flyback_px=7.7, flyback_width=0.076),
                   boundaries=[Boundary(kind="grain", angle_deg=142.0, offset=0.014, misorientation_deg=33.9,
                                        variant="X", shift=(2 / 3, 0.0))])
    chk = check_pixel_size(sim.image, "Mo0.5W0.5S2", None)
    assert chk.lattice == pytest.approx(0.1082, rel=0.03)
    # noise has no tiles that agree
    assert check_pixel_size(np.random.default_rng(1).normal(size=(384, 384)), "MoS2", None).lattice is None


def test_weak_lattice_of_three_grains_is_taken_where_the_tiles_show_it_too():
    # ~10 cells across, three grains, 8-bit with contamination: the whole frame's lattice
    # (strength 3.9) is below what a frame without a pixel size needs (4.5), and a pixel size
    # 25 % off does not vouch for it; four or more of its tiles show it on their own
    from napari_tmd_defects.pipeline import check_pixel_size
    from napari_tmd_defects.simulation import Optics

    sim = simulate("MoTe2", 384, pixel_size=0.088, rotation_deg=337.9, defect_fraction=0.056, seed=3,
                   optics=Optics(convergence_mrad=24.6, defocus_a=-2.5, astigmatism_a=6.5, astigmatism_deg=120.0,
                                 source_fwhm_a=0.64, z_exponent=1.62),
                   noise=Noise(poisson_lambda=27.0, gaussian_mu=29.7, background=0.115, contamination=0.27,
                               contamination_scale_a=11.1, quantize_8bit=True, jpeg_quality=93),
                   distortion=Distortion(row_jitter_px=0.33, row_jitter_corr=2.5, drift_px=(-7.1, 15.2), bend_px=2.77,
                                         bend_period=1.34),
                   boundaries=[Boundary(kind="grain", angle_deg=49.8, offset=-0.17, misorientation_deg=-18.7,
                                        variant="X", shift=(2 / 3, 0.5)),
                               Boundary(kind="grain", angle_deg=143.1, offset=0.087, misorientation_deg=-28.4,
                                        variant="M", shift=(1 / 3, 0.5))])
    for given in (None, 0.088 * 1.25):
        assert check_pixel_size(sim.image, "MoTe2", given).lattice == pytest.approx(0.088, rel=0.05)


def test_a_given_pixel_size_is_taken_where_only_the_lattice_rings_show_it():
    # ~9 cells across, three domains turned ~21° apart, 11 px of bending, 17 px of flyback,
    # a background-subtracted JPEG (a structure-stress frame): no reflection stands out
    # (strength 1.6), so the frame gave "no crystal lattice found" even with its pixel size;
    # its {100} and {110} rings, averaged round, still show the lattice of that size
    from napari_tmd_defects.pipeline import _find_lattice
    from napari_tmd_defects.simulation import Optics

    sim = simulate("MoS2", 384, pixel_size=0.072, rotation_deg=11.47, defect_fraction=0.06, seed=701006,
                   optics=Optics(voltage_kv=100.0, convergence_mrad=29.9, defocus_a=-9.5, astigmatism_a=17.4,
                                 astigmatism_deg=150.0, source_fwhm_a=0.98, z_exponent=1.98),
                   noise=Noise(poisson_lambda=40.1, gaussian_mu=9.3, background=0.33, contamination=0.16,
                               contamination_scale_a=14.2, quantize_8bit=True, jpeg_quality=79,
                               subtract_background=True),
                   distortion=Distortion(drift_px=(10.3, -8.2), bend_px=11.4, bend_period=1.56, flyback_px=17.2,
                                         flyback_width=0.051),
                   boundaries=[Boundary(kind="mirror", angle_deg=22.5, offset=0.33, misorientation_deg=20.7,
                                        variant="X", shift=(0.5, 0.0)),
                               Boundary(kind="grain", angle_deg=110.8, offset=-0.04, misorientation_deg=21.6,
                                        variant="X", shift=(2 / 3, 0.0))])
    res = analyze(sim.image, 0.072, "MoS2", device="cpu")
    assert any("no lattice reflections stand out" in w for w in res.warnings)
    s = score_result(res, sim.truth)
    assert s.recall > 0.8 and s.precision > 0.85 and s.site_fp.sum() == 0
    # not without a pixel size, nor with one 30 % or sqrt(3) off, nor on noise
    for given in (None, 0.072 * 1.3, 0.072 / 1.3, 0.072 * 3**0.5, 0.072 / 3**0.5):
        assert _find_lattice(sim.image, "MoS2", given) is None
    noise = np.random.default_rng(1).poisson(5.0, (384, 384)).astype(np.float32)
    assert all(_find_lattice(noise, "MoS2", p) is None for p in (0.05, 0.072, 0.1))


def test_unread_chalcogen_columns_are_said_to_leave_the_counts_lower_bounds():
    from napari_tmd_defects.pipeline import Frame, unresolved_chalcogen_warning

    frame = Frame(image=np.zeros((8, 8), np.float32), material="MoTe2", pixel_size=0.1, pixel_size_source="given")
    labels = np.array([0, 0, 3, 1, -2])
    unread = np.array([True, True, True, False, True])  # the boundary cell is not counted
    probs = np.eye(6)[[1, 0, 4, 1, 0]]  # the classifier: V_Te1, Perfect, V_Te1+V_Mo, ...
    unresolved_chalcogen_warning(frame, labels, unread, probs)
    assert frame.warnings == ["3 cells' Te columns could not be read (unresolved): their Te vacancies are not "
                              "counted, so the counts of the classes with one are lower bounds; the classifier "
                              "called 2 of them a chalcogen vacancy (counts_unread_as_classified in the summary "
                              "counts them so)"]
    frame.warnings.clear()
    unresolved_chalcogen_warning(frame, labels, np.zeros(5, bool), probs)
    assert frame.warnings == []


def test_counts_with_the_unread_cells_as_classified():
    from napari_tmd_defects.analysis import Result

    labels = np.array([0, 0, 3, 1, -2, 0])
    n = len(labels)
    probs = np.eye(6)[[1, 2, 4, 1, 0, 1]]  # the classifier: V_Te1, V_Te2, V_Te1+V_Mo, V_Te1, -, V_Te1
    res = Result(material="MoTe2", pixel_size=0.1, pixel_size_source="given", image_shape=(64, 64), alpha=0.65,
                 beta=0.5, hexagon_boxes=np.zeros((0, 4)), hexagon_scores=np.zeros(0), boxes=np.zeros((n, 4)),
                 x_sites=np.zeros((n, 2)), m_sites=np.zeros((n, 2)), ij=np.zeros((n, 2), int),
                 support=np.zeros(n, int), labels=labels, confidence=np.ones(n), probabilities=probs,
                 flagged=np.zeros(n, bool), corrected=np.array([0, 0, 0, 0, 0, 1], bool),
                 x_unresolved=np.array([1, 1, 1, 0, 1, 1], bool))
    assert list(res.counts().values()) == [3, 1, 0, 1, 0, 0]
    # the unread cells take the classifier's chalcogen state and keep their metal state as
    # read; a cell corrected by hand and the boundary cell are left as they are
    assert list(res.counts_unread_as_classified().values()) == [1, 2, 1, 0, 1, 0]
    assert res.summary()["counts_unread_as_classified"] == res.counts_unread_as_classified()
    # a cell whose column the site reading found full keeps its class: the classifier's
    # vacancy there was overruled, not left unread (cells 0-2 and 5 map to chalcogen sites
    # 0-2 and 5; the reading found site 1 full, site 0 unread)
    from types import SimpleNamespace

    res.site_states = SimpleNamespace(atoms=np.array([-1, 2, -1, 2, 2, 2]))
    res._cell_sites = lambda: (np.arange(n), np.arange(n))
    assert list(res.unread_cells()) == [True, False, True, False, False, False]
    assert list(res.counts_unread_as_classified().values()) == [2, 2, 0, 0, 1, 0]
    res.probabilities = None
    assert res.counts_unread_as_classified() is None


def test_a_few_cells_across_the_given_pixel_size_is_checked_against_the_autocorrelation():
    # ~9 cells across (384² at 0.076 Å/px), a mirror twin, 23 px of drift, an 8-bit export
    # (structure-stress MoS2:Re0.03 frame 18): the {100} reflections lie ~9 Fourier pixels
    # out and the weak lattice they gave (strength 3.2) was 14 % long, so the frame read "no
    # crystal lattice found" with its pixel size; the autocorrelation puts it within 2 %
    from conftest import structure_stress_frame

    from napari_tmd_defects.pipeline import _find_lattice

    sim, ps = structure_stress_frame("MoS2:Re0.03", 8, 18)
    lat = _find_lattice(sim.image, "MoS2", ps)
    assert lat is not None and abs(lat.a_px / sim.truth.a_px - 1.0) < 0.03
    res = analyze(sim.image, ps, "MoS2:Re0.03", device="cpu")
    s = score_result(res, sim.truth)
    assert s.recall > 0.85 and s.precision > 0.9 and s.site_fp.sum() == 0
    # a size 25 % off is not taken: the lattice found is the image's
    off = _find_lattice(sim.image, "MoS2", ps * 1.25)
    assert off is None or abs(off.a_px / sim.truth.a_px - 1.0) < 0.06
