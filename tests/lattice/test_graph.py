"""The neighbour graph: local lattice vectors and integer indices without a global lattice."""

import numpy as np
import pytest

from napari_tmd_defects.lattice.graph import index_columns
from napari_tmd_defects.simulation import Boundary, Distortion, Noise, simulate


def _columns(truth):
    xy = np.concatenate([truth.cell_x_site, truth.cell_m_site])
    is_x = np.r_[np.ones(truth.n_cells, bool), np.zeros(truth.n_cells, bool)]
    return xy, is_x


def test_a_distorted_lattice_is_one_patch_with_consistent_indices():
    dist = Distortion(drift_px=(25, -10), bend_px=5.0, flyback_px=8.0)
    sim = simulate("MoTe2", 400, pixel_size=0.1, rotation_deg=17, defect_fraction=0.0, distortion=dist, seed=3)
    xy, is_x = _columns(sim.truth)
    g = index_columns(xy, sim.truth.a_px)
    assert g.n_patches == 1 and np.all(g.patch == 0)
    assert not g.conflicts.any()
    cls = g.sublattice()
    # each sublattice of the honeycomb is one fine-lattice class, the hollows the third
    assert len(set(cls[is_x])) == 1 and len(set(cls[~is_x])) == 1 and cls[is_x][0] != cls[~is_x][0]
    # positions follow the indices through the local bases
    p, q = g.links.T
    pred = g.xy[p] + np.einsum("nij,nj->ni", 0.5 * (g.basis[p] + g.basis[q]), (g.nm[q] - g.nm[p]).astype(float))
    assert np.median(np.linalg.norm(pred - g.xy[q], axis=1)) < 0.05 * g.a_fine
    assert g.a_fine * np.sqrt(3) == pytest.approx(sim.truth.a_px, rel=0.05)


def test_grains_of_different_orientation_are_different_patches():
    sim = simulate("MoTe2", 400, pixel_size=0.1, defect_fraction=0.0, noise=Noise(None, 0), seed=4,
                   boundaries=[Boundary("grain", angle_deg=80, misorientation_deg=25)])
    xy, _ = _columns(sim.truth)
    g = index_columns(xy, sim.truth.a_px)
    dom = np.concatenate([sim.truth.cell_domain, sim.truth.cell_domain])
    for d in (0, 1):
        patches = set(g.patch[dom == d]) - {-1}
        assert len(patches) == 1
    assert set(g.patch[dom == 0]) != set(g.patch[dom == 1])


def test_random_points_make_no_patch():
    rng = np.random.default_rng(0)
    g = index_columns(rng.uniform(0, 400, (300, 2)), 30.0)
    assert g.n_patches == 0
    with pytest.raises(ValueError, match="a_px"):
        index_columns(np.zeros((5, 2)), -1.0)
    assert index_columns(np.zeros((0, 2)), 10.0).n_patches == 0


def test_round_offsets_in_closed_form_are_the_inverse_matrices():
    from napari_tmd_defects.lattice.graph import _round_offsets

    rng = np.random.default_rng(3)
    basis = rng.normal(size=(500, 2, 2)) * 10.0
    v = rng.normal(size=(500, 2)) * 30.0
    d, res = _round_offsets(v, basis)
    want = np.rint(np.einsum("eij,ej->ei", np.linalg.inv(basis), v)).astype(np.int64)
    assert np.array_equal(d, want)
    np.testing.assert_allclose(res, np.hypot(*(v - np.einsum("eij,ej->ei", basis, want)).T))
