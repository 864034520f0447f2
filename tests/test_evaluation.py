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
