import math

import numpy as np
import pytest

from napari_tmd_defects import geometry as geo


def test_lattice_vectors_and_rotation():
    a1, a2 = geo.lattice_vectors(10.0)
    assert np.allclose(a1, [10, 0])
    assert np.allclose(a2, [5, 10 * math.sqrt(3) / 2])
    r1, _ = geo.lattice_vectors(10.0, 90.0)
    # counter-clockwise on screen (y down): +x turns to -y
    assert np.allclose(r1, [0, -10], atol=1e-12)


def test_rotate_points_about_center_keeps_distances(rng):
    p = rng.uniform(0, 100, (20, 2))
    q = geo.rotate_points(p, 37.0, center=(50, 50))
    d0 = np.linalg.norm(p[:, None] - p[None], axis=-1)
    d1 = np.linalg.norm(q[:, None] - q[None], axis=-1)
    assert np.allclose(d0, d1)


def test_cell_is_x_left_m_right_bond_length():
    a = 30.0
    x = np.array([100.0, 100.0])
    m = x + geo.mx_offset(a)
    assert np.linalg.norm(m - x) == pytest.approx(a / math.sqrt(3))
    box = geo.cell_box(x, m, a)
    mid = (box[0] + box[2]) / 2
    assert box[0] < x[0] < mid < m[0] < box[2]
    # cell height equals the row spacing: cells tile the rows
    assert box[3] - box[1] == pytest.approx(a * math.sqrt(3) / 2)


def test_paper_casting_reproduces_ground_truth_cells():
    a = 29.3
    x = np.array([[50.0, 60.0]])
    c = x + geo.hexagon_center_offset(a)
    hbox = geo.hexagon_box(c, a)
    ul, lr = geo.cast_hexagons(hbox, 0.65, 0.5)
    gt_ul = geo.cell_box(x, x + geo.mx_offset(a), a)
    x_lr = x + geo.lattice_vectors(a)[1]
    gt_lr = geo.cell_box(x_lr, x_lr + geo.mx_offset(a), a)
    assert np.allclose(ul, gt_ul)
    assert np.allclose(lr, gt_lr)
    assert geo.box_iou(ul, gt_ul)[0, 0] == pytest.approx(1.0)


def test_cast_rejects_bad_ratios():
    with pytest.raises(ValueError, match="alpha"):
        geo.cast_hexagons(np.zeros((1, 4)), alpha=0.0)


def test_box_iou():
    a = np.array([[0, 0, 10, 10]])
    b = np.array([[5, 0, 15, 10], [20, 20, 30, 30]])
    iou = geo.box_iou(a, b)
    assert iou[0, 0] == pytest.approx(50 / 150)
    assert iou[0, 1] == 0


@pytest.mark.parametrize("pixel_size, rotation", [(0.12, 0.0), (0.09, 12.0), (0.05, -25.0), (0.03, 0.0)])
def test_estimate_lattice_pixel_size_and_rotation(pixel_size, rotation):
    from napari_tmd_defects.simulation import simulate

    size = 2048 if pixel_size == 0.03 else 384
    sim = simulate(shape=size, pixel_size=pixel_size, rotation_deg=rotation, seed=1)
    est = geo.estimate_lattice(sim.image)
    assert 3.52 / est.a_px == pytest.approx(pixel_size, rel=0.01)
    assert est.rotation_deg == pytest.approx(rotation, abs=0.5)
    assert est.strength > 10


def test_estimate_lattice_sees_no_lattice_in_noise():
    rng = np.random.default_rng(3)
    for img in (rng.normal(size=(256, 256)), rng.poisson(3.0, size=(256, 256)).astype(float)):
        est = geo.estimate_lattice(img)
        assert est is None or est.strength < 4.5
    assert geo.estimate_lattice(np.ones((64, 64))) is None
