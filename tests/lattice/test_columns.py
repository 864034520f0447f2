"""Columns found locally in the image."""

import numpy as np
import pytest
from scipy.spatial import cKDTree

from napari_tmd_defects.lattice.columns import WORK_PX_PER_A, find_columns, local_background, work_image
from napari_tmd_defects.simulation import Noise, simulate


def _truth_columns(truth):
    return np.concatenate([truth.cell_x_site, truth.cell_m_site])


@pytest.mark.parametrize("pixel_size, rotation", [(0.1, 0.0), (0.04, 23.0), (0.15, -41.0)])
def test_every_column_of_a_perfect_frame_is_found_on_its_peak(pixel_size, rotation):
    sim = simulate("MoTe2", 320, pixel_size=pixel_size, rotation_deg=rotation, defect_fraction=0.0,
                   noise=Noise(None, 0), seed=1)
    t = sim.truth
    work = work_image(sim.image, t.a_px)
    assert work.a_work == pytest.approx(t.a_px / work.factor)
    assert WORK_PX_PER_A <= work.a_work < 2 * WORK_PX_PER_A or work.factor == 1
    cols = find_columns(work)
    truth = _truth_columns(t)
    d, _ = cKDTree(cols.xy).query(truth)
    a_f = t.a_px / np.sqrt(3)
    assert np.mean(d < 0.15 * a_f) > 0.99
    assert np.median(d) < 0.05 * a_f  # sub-pixel positions
    # no column where there is none (no spurious peaks on a clean frame; columns of cells cut
    # by the border are not in the truth, so look inside)
    h, w = sim.image.shape
    m = t.a_px
    inner = cols.xy[(cols.xy[:, 0] > m) & (cols.xy[:, 0] < w - 1 - m) & (cols.xy[:, 1] > m) & (cols.xy[:, 1] < h - 1 - m)]
    d2, _ = cKDTree(truth).query(inner)
    assert np.mean(d2 < 0.15 * a_f) > 0.99


def test_noise_estimate_and_thresholds():
    sim = simulate("MoTe2", 256, pixel_size=0.1, noise=Noise(8, 20), seed=2)
    work = work_image(sim.image, sim.truth.a_px)
    assert work.noise > 0
    clean = simulate("MoTe2", 256, pixel_size=0.1, noise=Noise(None, 0), seed=2)
    assert work_image(clean.image, clean.truth.a_px).noise < 0.2 * work.noise


def test_background_and_bad_input():
    # the background of columns on a slope follows the slope at the hollows
    sim = simulate("MoTe2", 256, pixel_size=0.1, defect_fraction=0.0, noise=Noise(None, 0), seed=3)
    ramp = np.add.outer(np.arange(256.0), np.zeros(256)) * 0.2
    bg = local_background(sim.image + ramp, sim.truth.a_px)
    hol = np.rint(sim.truth.hex_center).astype(int)
    hol = hol[(hol >= 20).all(1) & (hol < 236).all(1)]
    err = bg[hol[:, 1], hol[:, 0]] - (sim.image + ramp)[hol[:, 1], hol[:, 0]]
    assert np.median(np.abs(err)) < 0.05 * np.ptp(sim.image)
    assert len(find_columns(work_image(np.zeros((64, 64)), 10.0))) == 0
    with pytest.raises(ValueError, match="a_px"):
        work_image(np.zeros((64, 64)), 0.0)
    with pytest.raises(ValueError, match="2-D"):
        work_image(np.zeros((4, 4, 4)), 10.0)


def test_work_image_at_full_sampling_leaves_the_image_as_it_was():
    img = simulate("MoTe2", 160, pixel_size=0.15, seed=2).image  # a < WORK_PX_PER_A px: no block averaging
    keep = img.copy()
    work = work_image(img, 3.52 / 0.15)
    assert work.factor == 1 and work.signal.dtype == np.float32
    np.testing.assert_array_equal(img, keep)
    assert not np.shares_memory(work.signal, img)


def test_background_subtracted_in_place_and_banded_noise_are_the_plain_forms():
    """The working image's in-place background removal and banded noise estimate equal the
    straightforward ones bit for bit."""
    import math

    from scipy import ndimage as ndi

    from napari_tmd_defects.lattice import columns

    img = simulate(shape=(300, 260), pixel_size=0.05, noise=Noise(10, 20), seed=3).image.astype(np.float32)
    a_px = 3.52 / 0.05
    w = work_image(img, a_px)
    f = int(a_px // WORK_PX_PER_A)
    small = columns.block_mean(img, f)
    sigma = max(0.6, columns.SMOOTH_A * a_px / f)
    smooth = ndi.gaussian_filter(small, sigma, mode="nearest")
    assert np.array_equal(w.signal, smooth - local_background(smooth, a_px / f))
    c = small[1:-1, 1:-1]
    d = c - 0.25 * (small[:-2, 1:-1] + small[2:, 1:-1] + small[1:-1, :-2] + small[1:-1, 2:])
    mad = float(np.median(np.abs(d - np.median(d))))
    assert w.noise == 1.4826 * mad / math.sqrt(1.25) / (2.0 * math.sqrt(math.pi) * sigma)


def test_work_image_on_several_threads_equals_one_threads(array_threads):
    sim = simulate("MoTe2", 800, pixel_size=0.05, noise=Noise(10, 15), seed=8)  # block-averaged (f 4), in 3 bands
    a_px = 3.52 / 0.05
    array_threads(1)
    one = work_image(sim.image, a_px)
    array_threads(3)
    three = work_image(sim.image, a_px)
    assert one.factor > 1 and three.noise == one.noise
    np.testing.assert_array_equal(three.signal, one.signal)
