import math

import numpy as np
import pytest

from napari_tmd_defects.materials import CLASS_VACANCIES, get_material
from napari_tmd_defects.simulation import (
    Distortion,
    GroundTruth,
    Noise,
    Optics,
    apply_noise,
    build_lattice,
    electron_wavelength,
    place_defects,
    probe_fwhm,
    render_columns,
    simulate,
)

CLEAN = Noise(poisson_lambda=None, gaussian_mu=0.0)


def test_wavelength_80kv():
    assert electron_wavelength(80) == pytest.approx(0.04176, abs=1e-5)


def test_probe_fwhm_from_aperture_matches_airy():
    # aberration-free circular aperture: FWHM = 1.029 lambda / (2 alpha)
    lam = electron_wavelength(80)
    assert probe_fwhm(Optics()) == pytest.approx(1.029 * lam / (2 * 0.027), rel=0.01)
    # a larger aperture gives the paper's 0.6 Å probe; source blur widens it
    assert probe_fwhm(Optics(convergence_mrad=36)) == pytest.approx(0.6, abs=0.02)
    assert probe_fwhm(Optics(source_fwhm_a=0.8)) > 1.05


@pytest.mark.parametrize("material", ["MoTe2", "MoS2", "WSe2"])
def test_nearest_neighbour_distances(material):
    sim = simulate(material, 256, pixel_size=0.1, noise=CLEAN, seed=0)
    t = sim.truth
    a_px = get_material(material).a / 0.1
    assert t.a_px == pytest.approx(a_px)
    bond = np.linalg.norm(t.cell_m_site - t.cell_x_site, axis=1)
    assert np.allclose(bond, a_px / math.sqrt(3), atol=1e-3)
    # X-X and M-X nearest neighbours over all columns
    x = t.cell_x_site
    d = np.linalg.norm(x[:, None] - x[None], axis=-1)
    np.fill_diagonal(d, np.inf)
    assert np.allclose(d.min(axis=1), a_px, atol=1e-3)
    dm = np.linalg.norm(x[:, None] - t.cell_m_site[None], axis=-1)
    assert np.allclose(dm.min(axis=1), a_px / math.sqrt(3), atol=1e-3)


def test_rotation_keeps_lattice_and_rotates_bonds():
    t0 = simulate(shape=300, pixel_size=0.1, noise=CLEAN, seed=0).truth
    t = simulate(shape=300, pixel_size=0.1, rotation_deg=30.0, noise=CLEAN, seed=0).truth
    bond = t.cell_m_site - t.cell_x_site
    ang = np.degrees(np.arctan2(-bond[:, 1], bond[:, 0]))  # screen angle, y up
    ang0 = np.degrees(np.arctan2(-(t0.cell_m_site - t0.cell_x_site)[:, 1], (t0.cell_m_site - t0.cell_x_site)[:, 0]))
    assert np.allclose(ang0, 30.0)
    assert np.allclose(ang, 60.0)
    assert np.allclose(np.linalg.norm(bond, axis=1), t.a_px / math.sqrt(3))


def test_cells_and_hexagons_lie_inside_and_are_unique():
    t = simulate(shape=(200, 300), pixel_size=0.08, noise=CLEAN, seed=0).truth
    for boxes in (t.cell_box, t.hex_box):
        assert boxes[:, 0].min() >= -0.5 and boxes[:, 1].min() >= -0.5
        assert boxes[:, 2].max() <= 299.5 and boxes[:, 3].max() <= 199.5
    assert len({tuple(ij) for ij in t.cell_ij}) == t.n_cells
    # each cell belongs to the two hexagons (i, j) and (i, j-1)
    hexes = {tuple(ij) for ij in t.hex_ij}
    interior = [ij for ij in map(tuple, t.cell_ij) if ij in hexes]
    assert len(interior) > 0.5 * t.n_cells
    # cell density matches the lattice: one cell per sqrt(3)/2 a^2
    area_px = 200 * 300
    expected = area_px / (math.sqrt(3) / 2 * t.a_px**2)
    assert 0.7 * expected < t.n_cells <= expected


def test_defect_counts_follow_labels():
    lab = place_defects(10000, 0.3, [1, 0, 0, 1, 0], rng=0)
    frac = np.bincount(lab, minlength=6) / lab.size
    assert frac[0] == pytest.approx(0.7, abs=0.02)
    assert frac[1] == pytest.approx(0.15, abs=0.02) and frac[4] == pytest.approx(0.15, abs=0.02)
    assert frac[2] == frac[3] == frac[5] == 0
    sim = simulate(shape=256, pixel_size=0.1, defect_fraction=0.5, seed=3)
    c = sim.truth.counts()
    assert sum(c.values()) == sim.truth.n_cells
    assert c["Perfect"] < sim.truth.n_cells


def _site_value(img, xy):
    from scipy import ndimage as ndi

    return ndi.map_coordinates(img, [xy[:, 1], xy[:, 0]], order=1)


def test_site_intensities_follow_vacancies():
    lat = build_lattice("MoTe2", (256, 256), 0.1)
    n = len(lat.ij)
    labels = np.arange(n) % 6
    sim = simulate(shape=256, pixel_size=0.1, labels=labels, noise=CLEAN, seed=0)
    t = sim.truth
    x_val = _site_value(sim.clean, t.cell_x_site)
    m_val = _site_value(sim.clean, t.cell_m_site)
    lab = t.cell_label
    empty_x = np.median(x_val[np.isin(lab, [2, 5])])  # both chalcogens missing
    full_x = np.median(x_val[np.isin(lab, [0, 3])])
    half_x = np.median(x_val[np.isin(lab, [1, 4])])
    # a V_Te1 column is about half a Te2 column above the background
    assert (half_x - empty_x) / (full_x - empty_x) == pytest.approx(0.5, abs=0.03)
    # a V_Mo site is dark: far below an occupied Mo column
    full_m = np.median(m_val[np.isin(lab, [0, 1, 2])])
    empty_m = np.median(m_val[np.isin(lab, [3, 4, 5])])
    assert empty_m < 0.35 * full_m
    # Te2 is the brightest column in MoTe2 (sum Z^1.7), Mo/Te2 contrast ~ 0.35
    assert full_x == pytest.approx(1.0, abs=0.1)
    assert (full_m - empty_m) / (full_x - empty_x) == pytest.approx(42**1.7 / (2 * 52**1.7), abs=0.06)


def test_metal_brighter_in_ws2():
    sim = simulate("WS2", 200, pixel_size=0.1, defect_fraction=0.0, noise=CLEAN, seed=0)
    t = sim.truth
    assert np.median(_site_value(sim.clean, t.cell_m_site)) > 2 * np.median(_site_value(sim.clean, t.cell_x_site))


def test_render_is_translation_consistent():
    # a column at any sub-pixel position peaks at the same height
    peaks = []
    for dx in (0.0, 0.25, 0.5):
        img = render_columns(np.array([[32.0 + dx, 32.0]]), np.array([1.0]), (64, 64), 0.1)
        peaks.append(img.max())
    assert np.ptp(peaks) < 0.02


def test_poisson_noise_statistics():
    clean = np.full((300, 300), 0.5)
    img = apply_noise(clean, Noise(poisson_lambda=10.0, gaussian_mu=0.0), rng=0)
    # counts ~ Poisson(5): mean 255*0.5, variance 255^2 * 0.5 / 10
    assert img.mean() == pytest.approx(127.5, rel=0.01)
    assert img.var() == pytest.approx(255**2 * 0.05, rel=0.05)
    # values are whole counts
    counts = img / 255 * 10
    assert np.allclose(counts, np.round(counts), atol=1e-3)


def test_gaussian_noise_statistics():
    clean = np.zeros((300, 300))
    img = apply_noise(clean, Noise(poisson_lambda=None, gaussian_mu=20.0), rng=0)
    assert img.mean() == pytest.approx(0.0, abs=0.3)
    assert img.std() == pytest.approx(20.0, rel=0.02)
    q = apply_noise(clean + 0.5, Noise(poisson_lambda=None, gaussian_mu=20.0, quantize_8bit=True), rng=0)
    assert q.min() >= 0 and q.max() <= 255 and np.all(q == np.round(q))


def test_deterministic_by_seed():
    a = simulate(shape=128, pixel_size=0.1, seed=5)
    b = simulate(shape=128, pixel_size=0.1, seed=5)
    c = simulate(shape=128, pixel_size=0.1, seed=6)
    assert np.array_equal(a.image, b.image)
    assert np.array_equal(a.truth.cell_label, b.truth.cell_label)
    assert not np.array_equal(a.image, c.image)


def test_distortions_move_ground_truth_with_the_columns():
    from napari_tmd_defects.simulation import Distortion

    sim = simulate(shape=256, pixel_size=0.1, noise=CLEAN, defect_fraction=0.0,
                   distortion=Distortion(row_jitter_px=1.0, drift_px=(6.0, 4.0)), seed=2)
    t = sim.truth
    # the image is brightest at the ground-truth X sites (local maxima nearby)
    from scipy import ndimage as ndi

    mx = ndi.maximum_filter(sim.clean, size=5)
    xs = np.round(t.cell_x_site).astype(int)
    at_max = sim.clean[xs[:, 1], xs[:, 0]] >= 0.9 * mx[xs[:, 1], xs[:, 0]]
    assert at_max.mean() > 0.95


def test_ground_truth_json_round_trip(tmp_path):
    t = simulate(shape=128, pixel_size=0.1, seed=1).truth
    p = t.save(tmp_path / "gt.json")
    u = GroundTruth.load(p)
    assert u.material == t.material and u.shape == t.shape
    assert np.allclose(u.cell_box, t.cell_box, atol=1e-3)
    assert np.array_equal(u.cell_label, t.cell_label)
    assert np.array_equal(u.hex_ij, t.hex_ij)
    assert u.counts() == t.counts()
    assert u.area_nm2 == pytest.approx(t.area_nm2)


def test_concentration_units():
    t = simulate(shape=128, pixel_size=0.1, seed=1).truth
    conc = t.concentrations_cm2()
    for name, n in t.counts().items():
        # 1 nm^2 = 1e-14 cm^2
        assert conc[name] == pytest.approx(n / (t.area_nm2 * 1e-14))


def test_bad_arguments_are_explained():
    with pytest.raises(ValueError, match="pixel_size"):
        simulate(pixel_size=0.0)
    with pytest.raises(ValueError, match="shape"):
        simulate(shape=4)
    with pytest.raises(ValueError, match="defect_fraction"):
        simulate(defect_fraction=1.5)
    with pytest.raises(ValueError, match="unknown material"):
        simulate("NbSe3")


def test_jpeg_export_noise():
    clean = np.full((64, 64), 0.4)
    clean[20:40, 20:40] = 0.9
    img = apply_noise(clean, Noise(poisson_lambda=None, gaussian_mu=0.0, quantize_8bit=True, jpeg_quality=60), rng=0)
    assert img.dtype == np.float32 and img.min() >= 0 and img.max() <= 255
    assert np.all(img == np.round(img))
    assert abs(float(img[30, 30]) - 0.9 * 255) < 6  # JPEG keeps the picture, adds small artefacts


def test_single_chalcogen_column_weight():
    from napari_tmd_defects.simulation import column_weights

    xw, mw = column_weights("MoTe2", np.array([0, 1, 2, 3]), 1.7, x1_fraction=0.44)
    assert xw[1] == pytest.approx(0.44 * xw[0]) and xw[2] == 0 and xw[3] == xw[0]
    assert mw[3] == 0 and mw[0] > 0


def test_vacuum_removes_whole_cells_and_nothing_else():
    from napari_tmd_defects.simulation import Vacuum

    kw = dict(shape=320, pixel_size=0.1, defect_fraction=0.2, seed=8)
    full = simulate(**kw)
    for kind in ("hole", "edge"):
        sim = simulate(vacuum=Vacuum(kind, 0.3), **kw)
        t, f = sim.truth, full.truth
        assert 0.55 * f.n_cells < t.n_cells < 0.85 * f.n_cells
        # the remaining cells are the same cells with the same classes
        keys = {tuple(ij): lab for ij, lab in zip(f.cell_ij.tolist(), f.cell_label)}
        assert all(keys[tuple(ij)] == lab for ij, lab in zip(t.cell_ij.tolist(), t.cell_label))
        assert t.params["vacuum"]["kind"] == kind
        assert len(t.hex_ij) < len(f.hex_ij)
        # no signal left where the crystal was removed: its X columns are dark
        there = {tuple(ij) for ij in t.cell_ij.tolist()}
        gone = np.array([tuple(ij) not in there for ij in f.cell_ij.tolist()])
        xs = np.rint(f.cell_x_site[gone]).astype(int)
        assert np.median(sim.clean[xs[:, 1], xs[:, 0]]) < 0.1 * np.median(full.clean[xs[:, 1], xs[:, 0]])
    with pytest.raises(ValueError):
        Vacuum("crack")
    with pytest.raises(ValueError):
        Vacuum("hole", fraction=0.0)


# --------------------------------------------------------------------------- boundaries
@pytest.mark.parametrize("kind", ["grain", "mirror", "inversion", "translation"])
def test_boundaries_make_two_domains_without_overlapping_columns(kind):
    from scipy.spatial import cKDTree

    from napari_tmd_defects.simulation import Boundary, Noise, simulate

    sim = simulate("MoSe2", 320, pixel_size=0.1, rotation_deg=7, defect_fraction=0.0, noise=Noise(None, 0),
                   boundaries=[Boundary(kind, angle_deg=30, misorientation_deg=22, shift=(0.5, 0.0))], seed=3)
    t = sim.truth
    assert set(np.unique(t.cell_domain)) == {0, 1}
    assert t.cell_boundary.any() and not t.cell_boundary.all()
    assert len(t.boundary_lines) == 1 and t.boundary_length_px > 200
    # boundary cells are the ones near the line
    line = t.boundary_lines[0]
    centre = 0.5 * (t.cell_x_site + t.cell_m_site)
    dist = cKDTree(line).query(centre)[0]
    assert np.all(dist[t.cell_boundary] < 1.1 * t.a_px) and np.all(dist[~t.cell_boundary] > 0.9 * t.a_px)
    # columns of the two domains never sit on top of each other unless they are one column
    cols = np.concatenate([t.cell_x_site, t.cell_m_site])
    pairs = cKDTree(cols).query_pairs(0.5 * t.a_px / np.sqrt(3), output_type="ndarray")
    dom = np.r_[t.cell_domain, t.cell_domain]
    d = np.linalg.norm(cols[pairs[:, 0]] - cols[pairs[:, 1]], axis=1)
    assert np.all(d[dom[pairs[:, 0]] != dom[pairs[:, 1]]] < 0.05)  # shared columns only
    # the truth round-trips through JSON with its domains
    from napari_tmd_defects.simulation import GroundTruth

    again = GroundTruth.from_dict(t.to_dict())
    assert np.array_equal(again.cell_domain, t.cell_domain) and np.array_equal(again.cell_boundary, t.cell_boundary)
    assert len(again.boundary_lines) == 1 and again.boundary_length_px == pytest.approx(t.boundary_length_px, rel=1e-3)


def test_mirror_twin_swaps_metal_and_hollow_across_a_zigzag_line():
    from napari_tmd_defects import geometry as geo
    from napari_tmd_defects.simulation import Boundary, Noise, simulate

    sim = simulate("MoTe2", 320, pixel_size=0.1, defect_fraction=0.0, noise=Noise(None, 0),
                   boundaries=[Boundary("mirror", angle_deg=3, variant="X")], seed=1)
    t = sim.truth
    a1, a2 = geo.lattice_vectors(t.a_px)
    basis = np.stack([a1, a2], axis=1)
    x0 = t.cell_x_site[t.cell_domain == 0][0]

    def frac(p):
        return np.linalg.solve(basis, (p - x0).T).T % 1.0

    # X columns of both domains on one lattice (the mirror line runs through an X row) ...
    fx = frac(t.cell_x_site[t.cell_domain == 1])
    assert np.allclose(np.minimum(fx, 1 - fx), 0, atol=0.02)
    # ... the second domain's metals sit on the first's hollow sites
    fm = frac(t.cell_m_site[t.cell_domain == 1])
    assert np.allclose(fm, [1 / 3, 1 / 3], atol=0.03)


def test_nonlinear_scan_distortion_moves_columns_and_the_truth_follows():
    from scipy import ndimage as ndi

    from napari_tmd_defects.simulation import Distortion, Noise, simulate

    plain = simulate("MoTe2", 320, pixel_size=0.1, defect_fraction=0.0, noise=Noise(None, 0), seed=2)
    bent = simulate("MoTe2", 320, pixel_size=0.1, defect_fraction=0.0, noise=Noise(None, 0), seed=2,
                    distortion=Distortion(bend_px=6.0, flyback_px=10.0))
    shift = np.linalg.norm(bent.truth.cell_x_site[:50] - plain.truth.cell_x_site[:50], axis=1)
    assert shift.max() > 2.0
    # the clean image peaks where the truth says
    v = ndi.map_coordinates(bent.clean, bent.truth.cell_x_site.T[::-1], order=1)
    assert np.median(v) > 0.9


def test_background_subtracted_export():
    from napari_tmd_defects.simulation import Noise, simulate

    sim = simulate("WSe2", 256, pixel_size=0.1, noise=Noise(20, 5, background=0.3, subtract_background=True,
                                                           quantize_8bit=True), seed=4)
    img = sim.image
    assert img.min() >= 0 and img.max() <= 255 and np.all(img == np.round(img))
    assert np.percentile(img, 10) < 10  # the background is gone


def test_alloys_and_dopants_are_simulated_with_their_atoms():
    from napari_tmd_defects.simulation import GroundTruth, place_species

    sim = simulate("Mo0.7W0.3Te2", 256, 0.1, defect_fraction=0.1, seed=4)
    t = sim.truth
    assert t.material == "Mo0.7W0.3Te2"
    present = t.cell_m_z > 0
    assert 0.15 < np.mean(t.cell_m_z[present] == 74) < 0.45
    vac = np.asarray(CLASS_VACANCIES)[t.cell_label]
    assert np.array_equal(t.cell_m_z == 0, vac[:, 1] == 1)
    assert np.array_equal((t.cell_x_z > 0).sum(axis=1), 2 - vac[:, 0])
    back = GroundTruth.from_dict(t.to_dict())
    assert np.array_equal(back.cell_m_z, t.cell_m_z) and np.array_equal(back.cell_x_z, t.cell_x_z)
    # a W column is brighter than a Mo column in the noise-free image
    xy = np.round(t.cell_m_site).astype(int)
    inside = (xy >= 2).all(1) & (xy[:, 0] < 254) & (xy[:, 1] < 254)
    peak = sim.clean[xy[inside, 1], xy[inside, 0]]
    z = t.cell_m_z[inside]
    assert peak[z == 74].mean() > 1.5 * peak[z == 42].mean()
    # a binary draws no random numbers for its atoms, and open fractions cannot be simulated
    m_z, x_z = place_species("MoTe2", np.array([0, 1, 3]))
    assert m_z.tolist() == [42, 42, 0] and x_z.tolist() == [[52, 52], [52, 0], [52, 52]]
    with pytest.raises(ValueError, match="fractions"):
        simulate("WS2(1-x)Se2x", 64, 0.1)


def test_strips_render_the_same_frame_with_the_same_truth():
    kw = dict(shape=(200, 170), pixel_size=0.1, rotation_deg=17.0, defect_fraction=0.2, seed=3)
    whole = simulate("MoTe2", noise=Noise(None, 0), **kw)
    strips = simulate("MoTe2", noise=Noise(None, 0), strip_rows=48, **kw)  # 48 does not divide 200
    np.testing.assert_allclose(strips.clean, whole.clean, atol=1e-6)
    np.testing.assert_allclose(strips.image, whole.image, atol=1e-3)
    np.testing.assert_array_equal(strips.truth.cell_label, whole.truth.cell_label)
    np.testing.assert_array_equal(strips.truth.cell_x_site, whole.truth.cell_x_site)
    # noise strip by strip: other draws, the same level
    noisy, ref = simulate("MoTe2", strip_rows=48, **kw), simulate("MoTe2", **kw)
    assert noisy.image.dtype == np.float32 and not np.array_equal(noisy.image, ref.image)
    res, res_ref = noisy.image - 255 * noisy.clean, ref.image - 255 * ref.clean
    assert np.std(res) == pytest.approx(np.std(res_ref), rel=0.05)


def test_strips_refuse_noise_and_jitter_that_act_on_the_whole_frame():
    with pytest.raises(ValueError, match="pixel-independent"):
        simulate("MoTe2", 64, pixel_size=0.1, noise=Noise(contamination=0.2), strip_rows=16)
    with pytest.raises(ValueError, match="row jitter"):
        simulate("MoTe2", 64, pixel_size=0.1, distortion=Distortion(row_jitter_px=0.5), strip_rows=16)


def test_a_mixed_chalcogen_column_is_brighter_with_its_lighter_atom_on_the_entrance_side():
    """As in multislice, the fast model's S/Se column depends on which atom faces the beam
    (``x_z[:, 0]`` the entrance atom); columns of one species and metals do not."""
    from napari_tmd_defects.simulation import species_weights
    from napari_tmd_defects.zcontrast import chalcogen_order_split

    m_z = np.array([74, 74, 74, 42])
    x_z = np.array([[16, 34], [34, 16], [34, 34], [0, 16]])
    plain_x, plain_m = species_weights(m_z, x_z, 1.7, 0.5)
    x_w, m_w = species_weights(m_z, x_z, 1.7, 0.5, voltage_kv=80.0)
    d = chalcogen_order_split(16, 34, 80.0)
    assert x_w[0] == pytest.approx(plain_x[0] * (1 + d)) and x_w[1] == pytest.approx(plain_x[1] * (1 - d))
    assert plain_x[0] == plain_x[1] and x_w[0] / x_w[1] > 1.09
    np.testing.assert_array_equal(x_w[2:], plain_x[2:])
    np.testing.assert_array_equal(m_w, plain_m)
    # a binary's columns are what they were: none is mixed
    from napari_tmd_defects.simulation import column_weights, place_species

    lab = np.arange(6)
    mz, xz = place_species("WSe2", lab)
    np.testing.assert_array_equal(species_weights(mz, xz, 1.7, 0.5, 80.0)[0], column_weights("WSe2", lab, 1.7, 0.5)[0])
