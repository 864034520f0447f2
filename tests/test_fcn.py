import numpy as np
import torch

from napari_tmd_defects.fcn import FCNSegmenter, analyze_fcn, build_unet, column_targets, train_fcn
from napari_tmd_defects.simulation import simulate


def test_unet_shapes():
    m = build_unet(base=4, depth=2)
    out = m(torch.zeros(2, 1, 40, 56))
    assert out.shape == (2, 4, 40, 56)


def test_column_targets_follow_the_truth():
    sim = simulate(shape=128, pixel_size=0.12, labels=None, defect_fraction=0.5, seed=1)
    t = sim.truth
    lab = column_targets(t, sim.image.shape)
    for k in range(t.n_cells):
        x, y = np.round(t.cell_x_site[k]).astype(int)
        nvx = [0, 1, 2, 0, 1, 2][t.cell_label[k]]
        assert lab[y, x] == [2, 3, 0][nvx]
        mx, my = np.round(t.cell_m_site[k]).astype(int)
        assert lab[my, mx] == (0 if t.cell_label[k] >= 3 else 1)


def test_tiny_training_run_and_analysis(tmp_path):
    torch.manual_seed(0)
    path = train_fcn(tmp_path / "fcn.pt", steps=4, batch=2, crop=96, pool=4, base=4, depth=2)
    seg = FCNSegmenter.load(path, device="cpu")
    assert seg.card["steps"] == 4 and "final_loss" in seg.card
    sim = simulate(shape=160, pixel_size=0.12, seed=2)
    p = seg.probabilities(sim.image, 0.12)
    assert p.shape == (4, 160, 160) and np.allclose(p.sum(axis=0), 1, atol=1e-4)
    res = analyze_fcn(sim.image, 0.12, "MoTe2", seg)
    assert res.n_cells > 0.9 * sim.truth.n_cells
    assert np.allclose(res.probabilities.sum(axis=1), 1)


def test_shipped_fcn_segments_the_sample():
    from napari_tmd_defects.evaluation import score_result
    from napari_tmd_defects.simulation import Noise, simulate

    sim = simulate(shape=320, pixel_size=0.1, defect_fraction=0.2, noise=Noise(15, 20), seed=12)
    res = analyze_fcn(sim.image, 0.1, "MoTe2", FCNSegmenter.load(device="cpu"))
    s = score_result(res, sim.truth)
    assert s.recall > 0.95 and s.class_accuracy > 0.8
