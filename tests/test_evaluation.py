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
