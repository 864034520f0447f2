import json
import math
import sys

import numpy as np
import pytest

from napari_tmd_defects import multislice as ms
from napari_tmd_defects.cli import main
from napari_tmd_defects.datasets import generate_dataset, load_dataset
from napari_tmd_defects.materials import CLASS_VACANCIES, class_index
from napari_tmd_defects.simulation import Noise, Optics, build_lattice, probe_kernel, simulate

CLEAN = Noise(poisson_lambda=None, gaussian_mu=0.0)
SHAPE, PS = 64, 0.15
#: cells (i, j) of the test image given a vacancy; all their columns lie inside the image
DEFECTS = {(-1, 0): "V_Te1", (0, 1): "V_Te2", (0, -1): "V_Mo"}


@pytest.fixture(scope="module")
def abtem():
    return pytest.importorskip("abtem")


@pytest.fixture(scope="module")
def tiny(abtem):
    """One tiny multislice run shared by the tests: 64² px at 0.15 Å/px (a 12.6 Å cell with a
    1.5 Å margin, computed as one periodic box), 1 frozen phonon, three vacancies."""
    lat = build_lattice("MoTe2", (SHAPE, SHAPE), PS)
    labels = np.zeros(len(lat.ij), dtype=np.int64)
    for k, ij in enumerate(map(tuple, lat.ij.tolist())):
        if ij in DEFECTS:
            labels[k] = class_index(DEFECTS[ij])
    sim = ms.simulate_multislice(
        "MoTe2", SHAPE, PS, labels=labels, noise=CLEAN, seed=3, frozen_phonons=1, cell_margin_a=1.5
    )
    return sim, lat, labels


def _value_at(img, xy):
    """Bilinear image value at (x, y) px."""
    from scipy import ndimage as ndi

    xy = np.asarray(xy, float).reshape(-1, 2)
    return ndi.map_coordinates(img.astype(float), [xy[:, 1], xy[:, 0]], order=1)


def _interior(xy, border_px=4):
    """Which of the columns ``xy`` (N, 2) px lie at least ``border_px`` inside the image."""
    return np.all((xy > border_px) & (xy < SHAPE - 1 - border_px), axis=1)


def test_missing_abtem_gives_install_hint(monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "abtem", None)  # `import abtem` now raises ImportError
    with pytest.raises(ImportError, match=r"\[multislice\] extra"):
        ms.require_abtem()
    rc = main(["simulate", "--model", "multislice", "--n", "1", "--size", "32", "--out", str(tmp_path / "ds")])
    assert rc == 1
    err = capsys.readouterr().err
    assert "install the [multislice] extra" in err and "Traceback" not in err
    assert not (tmp_path / "ds").exists()


def test_frozen_phonons_option_needs_multislice(tmp_path, capsys):
    rc = main(["simulate", "--n", "1", "--size", "32", "--frozen-phonons", "2", "--out", str(tmp_path)])
    assert rc == 1 and "--model multislice" in capsys.readouterr().err


def test_fourier_sampling_is_exact_for_band_limited_images():
    # a periodic image with frequencies below the sampling's Nyquist limit
    lx, ly, nx, ny = 7.3, 5.1, 21, 15

    def f(x, y):
        return (1.0 + np.cos(2 * math.pi * (3 * x / lx + 2 * y / ly) + 0.4)
                + 0.3 * np.sin(2 * math.pi * (-5 * x / lx + 6 * y / ly)))

    gx, gy = np.meshgrid(np.arange(nx) * lx / nx, np.arange(ny) * ly / ny, indexing="xy")
    xs = np.linspace(0.13, 6.9, 11)
    ys = np.linspace(0.2, 4.7, 9)
    got = ms._fourier_sample(f(gx, gy), (lx, ly), xs, ys)
    want = f(xs[None, :], ys[:, None])
    assert np.allclose(got, want, atol=1e-10)
    # per-row positions (scan jitter) give the same values
    got2 = ms._fourier_sample(f(gx, gy), (lx, ly), np.tile(xs, (len(ys), 1)), ys)
    assert np.allclose(got2, want, atol=1e-10)
    # a Gaussian blur damps each frequency by exp(-2 pi² sigma² k²)
    blurred = ms._fourier_sample(np.ones((ny, nx)) + np.cos(2 * math.pi * 3 * gx / lx), (lx, ly), xs, ys, 0.3)
    damp = math.exp(-2 * math.pi**2 * 0.09 * (3 / lx) ** 2)
    assert np.allclose(blurred, 1 + damp * np.cos(2 * math.pi * 3 * xs / lx)[None, :], atol=1e-10)


def test_cancel_stops_the_run(abtem):
    from napari_tmd_defects.runtime import Cancelled

    calls = []
    with pytest.raises(Cancelled):
        ms.simulate_multislice(shape=16, pixel_size=0.15, frozen_phonons=2, cell_margin_a=1.5,
                               progress=lambda d, t: calls.append((d, t)), cancel=lambda: len(calls) >= 1)
    assert calls == [(1, 2)]  # stopped before the second phonon configuration


def test_scan_step_and_detector_limits_are_checked(abtem):
    assert ms.nyquist_scan_step(Optics()) == pytest.approx(0.3866, abs=1e-3)
    with pytest.raises(ValueError, match="scan_sampling"):
        ms.simulate_multislice(shape=16, scan_sampling=0.5)
    with pytest.raises(ValueError, match="outer angle"):
        ms.simulate_multislice(shape=16, potential_sampling=0.08)
    with pytest.raises(ValueError, match="frozen_phonons"):
        ms.simulate_multislice(shape=16, frozen_phonons=-1)


@pytest.mark.parametrize(
    "optics",
    [Optics(), Optics(defocus_a=-30, cs_mm=0.005), Optics(defocus_a=20, cs_mm=0.01, astigmatism_a=10, astigmatism_deg=70)],
)
def test_abtem_probe_matches_fast_model_probe(abtem, optics):
    """Aberrations mean the same in both models (defocus sign with C3, astigmatism azimuth)."""
    import ase

    runner = ms._Runner(abtem, optics, 3.6, 0.05)
    pot = abtem.Potential(ase.Atoms(cell=[12.8, 12.8, 5.4]), gpts=(256, 256), slice_thickness=1.8)
    probe = runner.probe(pot)
    with abtem.config.set({"dask.lazy": False}):
        inten = (np.abs(probe.build((6.4, 6.4)).array) ** 2).T  # rows = y
    kern = probe_kernel(optics, 0.05)
    c = kern.shape[0] // 2
    sub = inten[128 - c : 128 + c + 1, 128 - c : 128 + c + 1]
    diff = np.abs(sub / sub.sum() - kern / kern.sum()).sum()
    assert diff < 0.06
    if optics.astigmatism_a:
        assert np.abs(sub.T / sub.sum() - kern / kern.sum()).sum() > 0.2  # the test can tell x from y


def test_tile_box_matches_whole_cell(abtem):
    """Probe positions computed in a small box cut from the cell give the whole cell's signal."""
    from napari_tmd_defects.simulation import Distortion, _prepare_scene

    scene = _prepare_scene("MoTe2", 100, 0.15, 0.0, 0.1, None, None, Distortion(), None, 2)
    pos, num, cell, _ = ms._cell_atoms(scene, 4.0, True, 0.1, None, 3.6, np.random.default_rng(0))
    runner = ms._Runner(abtem, Optics(), 3.6, 0.05)
    probe_xy = np.random.default_rng(1).uniform(9.0, 12.0, (24, 2))
    g = int(round(cell[0] / 0.05))  # the whole 23 Å cell as one periodic box
    gb = int(round(ms._TILE_BOX_A / 0.05))
    box = gb * 0.05
    origin = np.round((probe_xy.mean(axis=0) - box / 2) / 0.05) * 0.05
    xyz, n2 = ms._atoms_in_box(pos, num, cell, origin, box)
    assert len(n2) < 0.4 * len(num)
    with abtem.config.set({"dask.lazy": False}):
        whole = runner.signal(pos, num, cell, (g, g), probe_xy)
        tile = runner.signal(xyz, n2, (box, box), (gb, gb), probe_xy - origin)
    ref = whole.max()
    assert np.abs(tile - whole).max() < 0.05 * ref
    assert np.sqrt(np.mean((tile - whole) ** 2)) < 0.015 * ref


def test_same_ground_truth_as_fast_model(tiny):
    sim, _, labels = tiny
    fast = simulate("MoTe2", SHAPE, PS, labels=labels, noise=CLEAN, seed=3).truth
    a, b = sim.truth.to_dict(), fast.to_dict()
    a.pop("params"), b.pop("params")
    assert a == b and sim.truth.n_cells >= 4
    p = sim.truth.params
    assert p["model"] == "multislice" and p["multislice"]["frozen_phonons"] == 1
    assert p["multislice"]["scan_step_A"][0] <= ms.nyquist_scan_step() + 1e-9
    v1 = [r for r, lab in zip(sim.truth.cell_ij.tolist(), sim.truth.cell_label) if lab == class_index("V_Te1")]
    assert sorted([r[0], r[1]] for r in p["x1_missing_layer"]) == sorted(v1)
    assert all(r[2] in ("entrance", "exit") for r in p["x1_missing_layer"])


def test_brightest_pixels_sit_on_perfect_x2_columns(tiny):
    sim, lat, labels = tiny
    img = sim.clean
    assert img.shape == (SHAPE, SHAPE) and img.dtype == np.float32
    full_x = np.asarray(CLASS_VACANCIES)[labels, 0] == 0  # both Te atoms present
    perfect_x = lat.x_site[full_x & _interior(lat.x_site)]
    assert len(perfect_x) >= 4
    # every local maximum above 0.7 of the peak lies on a perfect Te2 column (< 1 px away),
    # and every perfect Te2 column has one
    from skimage.feature import peak_local_max

    peaks = peak_local_max(img, min_distance=3, threshold_abs=0.7 * img.max(), exclude_border=4)[:, ::-1]
    d = np.linalg.norm(peaks[:, None] - perfect_x[None], axis=-1)
    assert np.all(d.min(axis=1) < 1.0) and np.all(d.min(axis=0) < 1.0)
    # the normalisation: a Te2 column in the lattice peaks near 1 (an isolated column is 1;
    # the neighbours' tails add a little)
    assert 0.9 < np.median(_value_at(img, perfect_x)) < 1.25


def test_vacancies_change_column_intensities(tiny):
    sim, lat, labels = tiny
    img = sim.clean

    def at(sites, name):
        sel = labels == (class_index(name) if name else 0)
        return _value_at(img, sites[sel & _interior(sites)])

    te2, mo = np.median(at(lat.x_site, None)), np.median(at(lat.m_site, None))
    hollow = np.median(_value_at(img, lat.hex_center[_interior(lat.hex_center)]))
    te1, empty_x, empty_m = at(lat.x_site, "V_Te1"), at(lat.x_site, "V_Te2"), at(lat.m_site, "V_Mo")
    assert len(te1) == len(empty_x) == len(empty_m) == 1
    # the contrast order of the paper: Te2 > Te1 (about half) > Mo > empty sites ~ hollow sites
    assert te2 > te1[0] > mo > hollow
    r1 = (te1[0] - hollow) / (te2 - hollow)
    assert 0.35 < r1 < 0.7
    assert (empty_x[0] - hollow) < 0.15 * (te2 - hollow)
    assert (empty_m[0] - hollow) < 0.3 * (mo - hollow)


def test_noise_is_applied_like_in_the_fast_model(abtem):
    noise = Noise(poisson_lambda=None, gaussian_mu=5.0)
    sim = ms.simulate_multislice("MoTe2", 16, 0.15, noise=noise, seed=7, frozen_phonons=0, cell_margin_a=1.5)
    # grey levels where the reference peak is 255, and the fast model's noise stream
    rng_noise = np.random.default_rng(np.random.SeedSequence(7).spawn(3)[1])
    expected = rng_noise.normal(0.0, 5.0, size=(16, 16))
    assert sim.image.dtype == np.float32
    assert np.allclose(sim.image - 255.0 * sim.clean, expected, atol=1e-3)
    fast = simulate("MoTe2", 16, 0.15, noise=noise, seed=7)
    assert np.allclose(fast.image - 255.0 * fast.clean, expected, atol=1e-3)


def test_multislice_dataset_has_the_fast_layout_and_truth(abtem, tmp_path):
    opts = {"frozen_phonons": 0, "cell_margin_a": 1.5}
    generate_dataset(tmp_path / "ms", n=1, size=24, seed=5, pixel_size=0.15, n_preview=1,
                     model="multislice", model_options=opts)
    generate_dataset(tmp_path / "fast", n=1, size=24, seed=5, pixel_size=0.15, n_preview=0)
    index = json.loads((tmp_path / "ms" / "dataset.json").read_text())
    assert index["model"] == "multislice" and index["model_options"] == opts
    for name in ("coco_cells.json", "coco_hexagons.json", "preview/00000.png", "images/00000.tif"):
        assert (tmp_path / "ms" / name).exists()
    (img_m, gt_m), = [it.load() for it in load_dataset(tmp_path / "ms")]
    (img_f, gt_f), = [it.load() for it in load_dataset(tmp_path / "fast")]
    assert img_m.shape == img_f.shape == (24, 24)
    assert np.array_equal(gt_m.cell_label, gt_f.cell_label)
    assert np.allclose(gt_m.cell_box, gt_f.cell_box)
    assert gt_m.params["preset"] == "paper" and gt_m.params["model"] == "multislice"
    with pytest.raises(ValueError, match="model"):
        generate_dataset(tmp_path / "x", n=1, size=24, model="dft")
