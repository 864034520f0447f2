"""Cell-vs-simulation comparison: reference cells, M–X profiles, previews."""

import numpy as np
import pytest

from napari_tmd_defects.comparison import compare_cell, mx_profile, preview_image, reference_cell
from napari_tmd_defects.datasets import sample_image
from napari_tmd_defects.simulation import Noise

CLEAN = Noise(poisson_lambda=None, gaussian_mu=0.0)


def _peaks(d, p, bond):
    return p[np.argmin(abs(d))], p[np.argmin(abs(d - bond))]


def test_reference_cell_has_the_class_at_the_centre():
    sim, box, x, m = reference_cell("MoTe2", 3, 0.1, noise=CLEAN)
    h, w = sim.image.shape
    assert 0 <= box[0] and box[2] <= w - 1 and 0 <= box[1] and box[3] <= h - 1
    assert abs((box[0] + box[2]) / 2 - w / 2) < 0.6 * 35.2 and abs((box[1] + box[3]) / 2 - h / 2) < 0.6 * 35.2
    labels = sim.truth.cell_label
    assert labels.tolist().count(3) == 1 and set(labels.tolist()) == {0, 3}
    # V_Mo: the M column is (nearly) empty, the X column is not
    d, p = mx_profile(sim.clean, x, m, 0.1)
    pm, px = _peaks(d, p, 3.52 / np.sqrt(3))
    assert px > 0.8 and pm < 0.3


def test_mx_profile_runs_from_m_through_x():
    sim, box, x, m = reference_cell("MoTe2", 0, 0.05, noise=CLEAN)
    d, p = mx_profile(sim.clean, x, m, 0.05, extend=0.5, levels=(0.0, 1.0))
    bond = 3.52 / np.sqrt(3)
    assert d[0] == pytest.approx(-0.5 * bond, abs=0.03) and d[-1] == pytest.approx(1.5 * bond, abs=0.03)
    # the X column (two Te, Z = 52) is brighter than the Mo column (Z = 42), each a local maximum
    pm, px = _peaks(d, p, bond)
    assert px > pm > 0.25  # Mo: 42^1.7 vs Te2: 2 x 52^1.7
    assert abs(d[np.argmax(p)] - bond) < 0.1
    with pytest.raises(ValueError, match="coincide"):
        mx_profile(sim.clean, x, x, 0.05)
    with pytest.raises(ValueError, match="pixel_size"):
        mx_profile(sim.clean, x, m, 0.0)


def test_compare_cell_matches_the_simulated_class():
    sim = sample_image()
    t = sim.truth
    noise = Noise(12.0, 15.0, background=0.08)
    bond = 3.52 / np.sqrt(3)
    for label in (0, 2):
        k = int(np.flatnonzero(t.cell_label == label)[0])
        c = compare_cell(sim.image, t.cell_box[k], t.cell_x_site[k], t.cell_m_site[k], 0.09, label, noise=noise)
        assert c.class_name == ("Perfect", "V_Te2")[label // 2]
        assert abs(c.crop.shape[0] - c.reference_crop.shape[0]) <= 1
        for d, p in ((c.distance_A, c.profile), (c.reference_distance_A, c.reference_profile)):
            pm, px = _peaks(d, p, bond)
            assert (px > pm) if label == 0 else (px < pm - 0.1)
    with pytest.raises(ValueError, match="class id"):
        compare_cell(sim.image, t.cell_box[0], t.cell_x_site[0], t.cell_m_site[0], 0.09, 6)


def test_preview_image_shows_only_the_chosen_class():
    sim = preview_image("MoS2", 4, 0.1, shape=96, seed=3)
    labels = set(sim.truth.cell_label.tolist())
    assert labels == {0, 4}  # at least one defect even in a small frame
    assert set(preview_image("MoTe2", 0, 0.1, shape=96).truth.cell_label.tolist()) == {0}
