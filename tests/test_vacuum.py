"""Vacuum (holes, film edges): found from the lattice amplitude and left out of the analysis."""

import numpy as np
import pytest

from napari_tmd_defects.pipeline import analyze
from napari_tmd_defects.evaluation import score_result
from napari_tmd_defects.geometry import estimate_lattice
from napari_tmd_defects.simulation import Noise, Vacuum, simulate
from napari_tmd_defects.vacuum import lattice_amplitude, vacuum_mask


def _centres(truth, keep=None):
    c = np.rint(0.5 * (truth.cell_x_site + truth.cell_m_site)).astype(int)
    c = np.clip(c, 0, np.array(truth.shape[::-1]) - 1)
    return c if keep is None else c[keep]


@pytest.mark.parametrize("noise", [Noise(12, 20), Noise(4, 30, background=0.3, contamination=0.3)])
def test_no_vacuum_in_a_full_crystal(noise):
    sim = simulate(shape=384, pixel_size=0.09, defect_fraction=0.3, noise=noise, seed=2)
    lat = estimate_lattice(sim.image)
    amp = lattice_amplitude(sim.image, lat)
    assert amp.shape == sim.image.shape
    # uniform over the crystal, borders included, even with 30 % defective cells
    assert np.percentile(amp, 1) > 0.5 * np.percentile(amp, 90)
    assert not vacuum_mask(sim.image, lat).any()


@pytest.mark.parametrize("kind, rotation", [("hole", 0.0), ("edge", 23.0)])
def test_vacuum_mask_follows_the_hole_and_spares_the_crystal(kind, rotation):
    kw = dict(shape=448, pixel_size=0.09, rotation_deg=rotation, noise=Noise(8, 20), seed=5)
    sim = simulate(vacuum=Vacuum(kind, 0.25), **kw)
    full = simulate(**kw)
    mask = vacuum_mask(sim.image, estimate_lattice(sim.image))
    kept = _centres(sim.truth)
    assert not mask[kept[:, 1], kept[:, 0]].any()  # no true cell inside the mask
    there = {tuple(ij) for ij in sim.truth.cell_ij.tolist()}
    gone = _centres(full.truth, np.array([tuple(ij) not in there for ij in full.truth.cell_ij.tolist()]))
    assert mask[gone[:, 1], gone[:, 0]].mean() > 0.6  # most removed cells lie in the mask
    hole_area = 0.25 * 448 * 448
    assert 0.5 * hole_area < mask.sum() < 1.05 * hole_area


def test_analyze_leaves_vacuum_cells_out():
    sim = simulate(shape=448, pixel_size=0.09, vacuum=Vacuum("hole", 0.25), noise=Noise(10, 20),
                   defect_fraction=0.1, seed=11)
    res = analyze(sim.image, 0.09, device="cpu")
    t = sim.truth
    assert res.vacuum_mask is not None and 0.1 < res.vacuum_fraction < 0.3
    assert any("vacuum" in w for w in res.warnings)
    s = score_result(res, t)
    assert s.recall > 0.98 and s.precision > 0.98
    assert res.area_nm2 == pytest.approx(res.n_cells * 0.866025 * 0.352**2, rel=1e-4)
    # the empty film is not read as cells with both vacancies
    true_v = t.counts()["V_Te2+V_Mo"]
    assert abs(res.counts()["V_Te2+V_Mo"] - true_v) <= 2
    summ = res.summary()
    assert summ["vacuum_fraction_of_image"] > 0.1 and summ["n_cells_excluded_in_vacuum"] >= 0
    # switched off: the vacuum is not masked
    off = analyze(sim.image, 0.09, device="cpu", exclude_vacuum=False)
    assert off.vacuum_mask is None and off.vacuum_fraction == 0.0


def test_a_second_grain_is_not_vacuum():
    from napari_tmd_defects.lattice import find_sites
    from napari_tmd_defects.simulation import Boundary, Noise, simulate
    from napari_tmd_defects.vacuum import domain_lattices, vacuum_mask

    sim = simulate("MoTe2", 384, pixel_size=0.1, defect_fraction=0.0, noise=Noise(20, 10), seed=3,
                   boundaries=[Boundary("grain", angle_deg=90, misorientation_deg=24)])
    model = find_sites(sim.image, sim.truth.a_px, "MoTe2")
    lats = domain_lattices(model)
    assert len(lats) == 2
    # with the first grain's lattice only, the second grain would read as vacuum
    assert vacuum_mask(sim.image, lats[:1]).mean() > 0.2
    assert vacuum_mask(sim.image, lats).mean() < 0.01


def test_mask_on_the_reduced_grid_matches_the_full_resolution_one():
    """Percentile, threshold and region sizes taken on the block grid (each block counted
    with its pixels) give the mask the full-resolution amplitude gives."""
    from scipy import ndimage as ndi

    from napari_tmd_defects.vacuum import MIN_VACUUM_CELLS, VACUUM_THRESHOLD

    sim = simulate(shape=(430, 451), pixel_size=0.1, vacuum=Vacuum("hole", 0.25), noise=Noise(8, 20), seed=4)
    lat = estimate_lattice(sim.image)
    amp = lattice_amplitude(sim.image, lat)  # 10 px per a or more: a block grid (f = 3)
    low = amp / float(np.percentile(amp, 90)) < VACUUM_THRESHOLD
    lab, _ = ndi.label(low)
    sizes = np.bincount(lab.ravel())
    keep = sizes >= MIN_VACUUM_CELLS * np.sqrt(3) / 2 * lat.a_px**2
    keep[0] = False
    mask = vacuum_mask(sim.image, lat)
    assert mask.any() and np.array_equal(mask, keep[lab])


def test_distance_to_mask_is_the_distance_transform():
    from scipy import ndimage as ndi

    from napari_tmd_defects.vacuum import distance_to_mask

    rng = np.random.default_rng(0)
    mask = ndi.binary_dilation(rng.random((60, 70)) > 0.995, iterations=3)
    mask[:, :2] = True  # touching the border
    rows, cols = np.nonzero(np.ones_like(mask))
    assert np.array_equal(distance_to_mask(mask, rows, cols), ndi.distance_transform_edt(~mask)[rows, cols])


def test_distance_to_mask_in_bands_of_rows(monkeypatch):
    """The mask's edge found band by band (each with its neighbours' rows) is the whole one's."""
    from scipy import ndimage as ndi

    from napari_tmd_defects import vacuum

    rng = np.random.default_rng(1)
    mask = ndi.binary_dilation(rng.random((50, 40)) > 0.99, iterations=2)
    mask[:3, :] = True  # touching the top border
    mask[-1, 5:9] = True  # and the bottom one
    rows, cols = np.nonzero(np.ones_like(mask))
    ref = ndi.distance_transform_edt(~mask)[rows, cols]
    for band_elements in (40, 120, 1 << 22):  # one row, three rows, the whole mask per band
        monkeypatch.setattr(vacuum, "_EDGE_BAND_ELEMENTS", band_elements)
        assert np.array_equal(vacuum.distance_to_mask(mask, rows, cols), ref)


def test_columns_next_to_vacuum_are_read_against_the_film():
    # a black border (padding, a canvas): the columns are measured against the film's
    # hollows, not the darker vacuum
    from scipy.spatial import cKDTree

    from napari_tmd_defects.pipeline import locate_cells
    from napari_tmd_defects.sites import ROLE_M

    sim = simulate("MoS2:Re0.03", shape=320, pixel_size=0.1, defect_fraction=0.05, seed=4,
                   noise=Noise(12, 10, background=0.1))
    img = sim.image.astype(np.float32)
    img += 0.15 * img.max()  # the film's hollows well above the vacuum (a support, contamination)
    pad = 60
    padded = np.pad(img, pad)
    plain, framed = locate_cells(img, 0.1, "MoS2:Re0.03"), locate_cells(padded, 0.1, "MoS2:Re0.03")
    assert framed.vacuum is not None and plain.vacuum is None
    sa, sb = plain.model.sites, framed.model.sites
    d, j = cKDTree(sb.xy - pad).query(sa.xy)
    m = (d < 1.0) & (sa.role == ROLE_M) & ~sa.placed & ~sb.placed[j]
    ratio = sb.height[j[m]] / sa.height[m]
    assert m.sum() > 100 and np.median(ratio) == pytest.approx(1.0, abs=0.05)
    # measured against the vacuum, the columns read 25 % brighter (median) and the rim's far more


def test_a_flat_dark_border_is_vacuum_to_its_edge():
    """Zero padding next to a film well above zero: the step carries power at the lattice
    frequencies, so the lattice amplitude leaves much of the pad unmasked; the flat region
    is masked to within a block of its edge."""
    from napari_tmd_defects.vacuum import flat_vacuum

    sim = simulate("MoS2", shape=256, pixel_size=0.1, defect_fraction=0.0, seed=1, noise=Noise(12, 10))
    img = sim.image.astype(np.float32) + 0.15 * float(sim.image.max())
    padded = np.pad(img, 64)
    flat = flat_vacuum(padded, sim.truth.a_px)
    pad = np.ones(padded.shape, bool)
    pad[64:-64, 64:-64] = False
    assert flat is not None and not flat[~pad].any()
    assert flat[pad].mean() > 0.97


@pytest.mark.parametrize("material", ["MoS2", "WSe2"])
def test_hollows_clipped_at_zero_are_not_vacuum(material):
    """A background-subtracted 8-bit export clips the hollows (and faint chalcogen columns)
    at zero: flat dark pixels linked between the columns, with no room for the disk a
    padded border holds."""
    from napari_tmd_defects.vacuum import flat_vacuum

    sim = simulate(material, shape=256, pixel_size=0.1, defect_fraction=0.05, seed=2, noise=Noise(30, 5))
    img = sim.image.astype(np.float64)
    for q in (50, 70):  # the chalcogen columns clipped too at the 70th percentile
        clipped = np.clip((img - np.percentile(img, q)) / np.ptp(img) * 255, 0, 255).astype(np.uint8)
        assert (clipped == 0).mean() > 0.4
        assert flat_vacuum(clipped, sim.truth.a_px) is None


def test_a_padded_doped_frame_reads_its_dopants_as_without_the_pad():
    """MoS2:Re with its film 15 % of the peak above a zero pad: read as without the pad (the
    rim's metal columns read 20 Re before: the site-state head's patches took the pad's
    zero as their low level, and the vacuum mask covered a fifth of the pad)."""
    sim = simulate("MoS2:Re0.02", 320, 0.1, defect_fraction=0.05, seed=1, noise=Noise(20, 10))
    img = sim.image.astype(np.float32)
    img = img - img.min() + 0.15 * (img.max() - img.min())
    counts = [analyze(a, 0.1, "MoS2:Re0.02").site_state_counts()["M"].get("Re", 0) for a in (img, np.pad(img, 64))]
    n_re = int(np.sum(sim.truth.cell_m_z[sim.truth.interior] == 75))
    assert abs(counts[1] - counts[0]) <= 2 and counts[1] <= n_re + 3


def test_lattice_amplitude_on_several_threads_equals_one_threads(monkeypatch, array_threads):
    """Reflections demodulated on several threads, in strips of rows: value for value."""
    import napari_tmd_defects.vacuum as V

    sim = simulate(shape=(430, 451), pixel_size=0.1, vacuum=Vacuum("hole", 0.25), noise=Noise(8, 20), seed=4)
    lat = estimate_lattice(sim.image)
    array_threads(1)
    one = lattice_amplitude(sim.image, lat)
    monkeypatch.setattr(V, "_STRIP_ELEMENTS", 1 << 12)  # several strips, each with its own kernel rows
    np.testing.assert_array_equal(lattice_amplitude(sim.image, lat), one)
    for n in (2, 3):
        array_threads(n)
        np.testing.assert_array_equal(lattice_amplitude(sim.image, lat), one)
