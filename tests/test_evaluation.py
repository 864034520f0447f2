import numpy as np
import pytest

from napari_tmd_defects.evaluation import CellScore, aggregate, format_report, match_cells


def test_match_cells_one_to_one_with_duplicates():
    gt = np.array([[0, 0, 10, 10], [30, 0, 40, 10], [60, 0, 70, 10]], float)
    pred = np.array([[0.5, 0, 10.5, 10], [1, 0, 11, 10], [30, 0, 40, 10], [200, 0, 210, 10]], float)
    pi, gi, dup = match_cells(pred, gt, a_px=30)
    assert sorted(gi.tolist()) == [0, 1]
    assert dup == 1  # the second box on cell 0
    assert 3 not in pi  # far away: a false positive, not a duplicate


def test_scores_and_report():
    s = CellScore(n_true=10, n_pred=9, n_matched=9, n_iou50=8, iou_sum=7.2, n_images=1)
    s.confusion[0, 0] = 8
    s.confusion[1, 0] = 1
    s.true_counts[:2] = [8, 2]
    s.pred_counts[:2] = [9, 0]
    tot = aggregate([s, s])
    assert tot.n_true == 20 and tot.recall == pytest.approx(0.9)
    assert tot.class_accuracy == pytest.approx(8 / 9)
    acc = tot.per_class_accuracy()
    assert acc[0] == 1 and acc[1] == 0 and np.isnan(acc[2])
    md = format_report("t", {"m": tot}, command="tmd-defects evaluate")
    assert "| m | 2 | 20 | 90.00 %" in md and "V_Te1" in md


def test_structure_scores_sites_boundaries_and_fake_clusters():
    from conftest import TruthClassifier

    from napari_tmd_defects.evaluation import score_result
    from napari_tmd_defects.pipeline import analyze
    from napari_tmd_defects.simulation import Boundary, Noise, simulate

    sim = simulate("MoTe2", 384, pixel_size=0.1, defect_fraction=0.15, noise=Noise(30, 5), seed=12,
                   boundaries=[Boundary("grain", angle_deg=45, misorientation_deg=20)])
    t = sim.truth
    res = analyze(sim.image, 0.1, use_detector=False, classifier=TruthClassifier(t))
    s = score_result(res, t)
    assert s.boundary_points > 0 and s.boundary_recall > 0.9
    assert np.all(s.site_recall() > 0.9) and np.all(s.site_precision() > 0.9)
    assert s.largest_fake_cluster <= 2
    # a result that calls a block of fake V_M is caught by the cluster measure
    lab = res.labels.copy()
    centre = 0.5 * (res.x_sites + res.m_sites)
    block = np.linalg.norm(centre - centre.mean(axis=0), axis=1) < 3.5 * t.a_px
    res.labels = np.where(block & (lab >= 0), 3, lab)
    s2 = score_result(res, t)
    assert s2.largest_fake_cluster >= 10 and s2.site_precision()[0] < s.site_precision()[0]


def test_cells_paired_with_another_metal_neighbour_still_match():
    """The X -> M partner is a convention: a result that pairs every X with the metal
    neighbour 120° away is scored against the truth's site states in its own pairing."""
    from types import SimpleNamespace

    from napari_tmd_defects.evaluation import score_result
    from napari_tmd_defects.simulation import Noise, simulate

    t = simulate("MoTe2", 320, pixel_size=0.1, rotation_deg=10, defect_fraction=0.3, noise=Noise(None, 0),
                 seed=4).truth
    bond = t.cell_m_site - t.cell_x_site
    c, s = np.cos(np.radians(120)), np.sin(np.radians(120))
    turned = np.stack([c * bond[:, 0] - s * bond[:, 1], s * bond[:, 0] + c * bond[:, 1]], axis=1)
    want = t.cell_x_site + turned
    d = np.linalg.norm(t.cell_m_site[None] - want[:, None], axis=2)
    k = d.argmin(axis=1)
    ok = d[np.arange(len(k)), k] < 0.1 * t.a_px  # X sites whose turned partner is in the frame
    tx = np.asarray(t.cell_label) % 3
    tm = np.asarray(t.cell_label) >= 3
    labels = (tx + 3 * tm[k])[ok]
    shift = (want - 0.5 * bond - t.cell_x_site)[ok]  # centre of the turned cell minus the truth's
    boxes = t.cell_box[ok] + np.c_[shift, shift]
    res = SimpleNamespace(n_cells=int(ok.sum()), labels=labels, boxes=boxes, x_sites=t.cell_x_site[ok],
                          m_sites=t.cell_m_site[k[ok]], x_unresolved=np.zeros(int(ok.sum()), bool), sites=None,
                          timings={})
    sc = score_result(res, t)
    assert sc.n_matched == ok.sum() and sc.class_accuracy == 1.0
    # every vacancy on a site the result covers is found, and nothing else is called
    assert sc.site_tp.tolist() == [int(tm[k[ok]].sum()), int(np.sum(tx[ok] == 1)), int(np.sum(tx[ok] == 2))]
    assert np.all(sc.site_precision() == 1.0)
    assert sc.largest_fake_cluster == 0


def test_a_call_on_a_cell_the_truth_does_not_list_is_false_only_inside_the_image():
    """The truth lists the cells whose box lies inside the image: a vacancy called on an
    invented cell inside the frame is false, one on a cell crossing the edge is not scored."""
    from types import SimpleNamespace

    from napari_tmd_defects.evaluation import score_result
    from napari_tmd_defects.simulation import Noise, simulate

    t = simulate("MoTe2", 256, pixel_size=0.1, defect_fraction=0.0, noise=Noise(None, 0), seed=5).truth
    a = t.a_px
    n = t.n_cells
    # an invented cell off the lattice inside the image, and one across the edge x = 0
    xs = np.r_[t.cell_x_site, [[t.cell_x_site[:, 0].mean() + 0.37 * a, t.cell_x_site[:, 1].mean() + 0.41 * a]],
               [[2.0, 128.0]]]
    ms = np.r_[t.cell_m_site, xs[-2:] + [0.5 * a, 0.3 * a]]
    boxes = np.r_[t.cell_box, [[xs[-2, 0] - 0.5 * a, xs[-2, 1] - 0.5 * a, xs[-2, 0] + 0.5 * a, xs[-2, 1] + 0.5 * a],
                               [-0.3 * a, 128 - 0.5 * a, 0.7 * a, 128 + 0.5 * a]]]

    def score(labels):
        res = SimpleNamespace(n_cells=n + 2, labels=np.asarray(labels), boxes=boxes, x_sites=xs, m_sites=ms,
                              x_unresolved=np.zeros(n + 2, bool), sites=None, timings={})
        return score_result(res, t)

    base = np.zeros(n + 2, int)
    assert score(base).site_fp.tolist() == [0, 0, 0]
    edge = base.copy()
    edge[-1] = 3  # V_M on the cell that crosses the image's edge
    assert score(edge).site_fp.tolist() == [0, 0, 0]
    inside = base.copy()
    inside[-2] = 3  # V_M on a cell the truth does not have, inside the image
    assert score(inside).site_fp.tolist() == [1, 0, 0]


def test_a_result_without_cells_scores_as_all_missed():
    from napari_tmd_defects.analysis import empty_result
    from napari_tmd_defects.evaluation import score_result
    from napari_tmd_defects.simulation import Boundary, Noise, simulate

    t = simulate("MoTe2", 256, pixel_size=0.1, defect_fraction=0.3, noise=Noise(None, 0), seed=3,
                 boundaries=[Boundary("mirror", angle_deg=30)]).truth
    sc = score_result(empty_result((256, 256), "MoTe2", 0.1, "given", 0.65, 0.5, [], 0.6), t)
    assert sc.n_matched == 0 and sc.recall == 0 and sc.site_tp.sum() == 0
    assert sc.site_fn.sum() > 0 and sc.boundary_recall == 0


def test_calibration_error_and_reliability():
    s = CellScore()
    # 100 cells at confidence 0.95, 90 right: ECE 0.05; 100 at 0.55, 55 right: gap 0
    s.calib_n[9], s.calib_conf[9], s.calib_right[9] = 100, 95.0, 90
    s.calib_n[5], s.calib_conf[5], s.calib_right[5] = 100, 55.0, 55
    assert s.ece == pytest.approx(0.025)
    rel = s.reliability()
    assert [r[2] for r in rel] == [100, 100] and rel[1][4] == pytest.approx(0.9)
    other = CellScore()
    other.add(s)
    assert other.ece == pytest.approx(0.025)
    assert "Reliability" in format_report("t", {"m": s})
    assert CellScore().ece != CellScore().ece  # NaN without cells


def test_temperature_scaling_recovers_a_known_temperature():
    from napari_tmd_defects.classification import fit_temperature

    rng = np.random.default_rng(0)
    logits = rng.normal(0, 3, size=(4000, 6))
    y = np.array([rng.choice(6, p=np.exp(row) / np.exp(row).sum()) for row in logits])  # calibrated at T = 1
    p_sharp = np.exp(2.0 * logits)  # the network's softmax twice too sharp: T = 2 undoes it
    p_sharp /= p_sharp.sum(1, keepdims=True)
    assert fit_temperature(p_sharp, y) == pytest.approx(2.0, rel=0.1)
    with pytest.raises(ValueError):
        fit_temperature(np.zeros((0, 6)), np.zeros(0))


def test_a_report_on_one_material_names_its_classes(tmp_path):
    from napari_tmd_defects.datasets import generate_dataset
    from napari_tmd_defects.evaluation import dataset_material

    generate_dataset(tmp_path / "w", n=2, size=96, material="WSe2", seed=3)
    assert dataset_material(tmp_path / "w") == "WSe2"
    md = format_report("t", {"m": CellScore(n_images=1)}, material=dataset_material(tmp_path / "w"))
    assert "| V_Se1 | V_Se2 | V_W |" in md and "V_Te1" not in md
