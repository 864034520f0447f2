"""What an export adds: burned-in annotations (scale bars, labels) found, filled and their
cells left out; dark columns (bright field, inverted contrast) told from HAADF; a Fourier
(Bragg) filtered frame told from a raw one."""

import numpy as np
import pytest

from napari_tmd_defects.evaluation import score_result
from napari_tmd_defects.exports import (DARK_COLUMNS_POLARITY, FOURIER_FILTERED_POWER, annotation_mask,
                                        between_reflections_power, colour_mask, column_polarity, fill_annotations,
                                        UNKNOWN_COLOUR_MAP, rgb_to_grey, fill_inset, flat_maximum_mask, flat_minimum_mask,
                                        inset_mask)
from napari_tmd_defects.geometry import estimate_lattice
from napari_tmd_defects.pipeline import analyze
from napari_tmd_defects.simulation import Noise, Vacuum, fourier_filter, simulate


def _burn_bar(img: np.ndarray, dark: bool = False) -> tuple[np.ndarray, tuple[slice, slice]]:
    """A scale bar and a label block at the frame's brightest grey level (``dark``: a thin
    bar at its darkest), bottom left."""
    out = img.copy()
    h, w = img.shape
    if dark:
        bar = (slice(int(0.90 * h), int(0.92 * h)), slice(int(0.05 * w), int(0.35 * w)))
        out[bar] = img.min()
        return out, bar
    bar = (slice(int(0.90 * h), int(0.93 * h)), slice(int(0.05 * w), int(0.35 * w)))
    out[bar] = img.max()
    out[int(0.83 * h):int(0.87 * h), int(0.05 * w):int(0.15 * w)] = img.max()
    return out, bar


@pytest.mark.parametrize("pixel_size", [0.03, 0.15])
def test_clipped_column_tops_are_not_annotations(pixel_size):
    # a background-subtracted, auto-contrasted 8-bit export clips the brightest column tops flat
    sim = simulate("WSe2", shape=384, pixel_size=pixel_size, defect_fraction=0.1, seed=3,
                   noise=Noise(12, 5, quantize_8bit=True, subtract_background=True))
    a_px = 3.28 / pixel_size
    assert (sim.image == sim.image.max()).sum() > 10  # tops are clipped ...
    assert flat_maximum_mask(sim.image, a_px) is None  # ... but none is a lattice constant wide


@pytest.mark.parametrize("pixel_size", [0.06, 0.1])
def test_chains_of_clipped_column_tops_are_not_annotations(pixel_size):
    # an export saturated at its 80th percentile: the flat tops join into chains longer
    # than a lattice constant, but no solid region stands behind them
    sim = simulate("MoTe2", shape=384, pixel_size=pixel_size, defect_fraction=0.1, seed=5,
                   noise=Noise(8, 10, contamination=0.3))
    img = np.minimum(sim.image, np.percentile(sim.image, 80))
    a_px = 3.52 / pixel_size
    from scipy import ndimage as ndi

    labels, _ = ndi.label(img == img.max(), structure=np.ones((3, 3), bool))
    assert max(max(sl[0].stop - sl[0].start, sl[1].stop - sl[1].start) for sl in ndi.find_objects(labels)) > a_px
    assert flat_maximum_mask(img, a_px) is None
    img, bar = _burn_bar(img)  # a bar on that frame is still found
    mask = flat_maximum_mask(img, a_px)
    assert mask is not None and mask[bar].all() and mask.mean() < 0.1


def test_a_scale_bar_is_found_and_filled():
    sim = simulate("MoTe2", shape=320, pixel_size=0.1, defect_fraction=0.1, seed=4, noise=Noise(12, 20))
    img, bar = _burn_bar(sim.image)
    mask = annotation_mask(img, 35.2)
    assert mask is not None and mask[bar].all()
    assert mask.mean() < 0.1 and not mask[:200].any()
    filled, excluded = fill_annotations(img, mask, 35.2)
    # the bar's flat maximum replaced by the frame's own pixels: its histogram barely moves
    assert filled.dtype == np.float32 and np.mean(filled[bar] == img.max()) < 0.01
    q = [1, 50, 99]
    assert np.allclose(np.percentile(filled, q), np.percentile(img[~mask], q), atol=0.02 * np.ptp(img))
    assert np.array_equal(filled[:200], img[:200].astype(np.float32))  # the crystal untouched
    assert excluded[mask].all() and excluded.sum() > mask.sum()
    # nearly all the frame at one level is a clipped export, not an annotation
    flat = img.copy()
    flat[: int(0.6 * flat.shape[0])] = img.max()
    assert annotation_mask(flat, 35.2) is None


def test_a_black_scale_bar_is_found_but_not_padding_or_a_clipped_hole():
    # a background-subtracted 8-bit export: the hollows clip to 0, none a lattice constant wide
    sim = simulate("MoS2", shape=320, pixel_size=0.08, defect_fraction=0.1, seed=6,
                   noise=Noise(12, 5, quantize_8bit=True, subtract_background=True))
    img, a_px = sim.image, 3.19 / 0.08
    assert (img == img.min()).sum() > 10 and flat_minimum_mask(img, a_px) is None
    barred, bar = _burn_bar(img, dark=True)
    mask = flat_minimum_mask(barred, a_px)
    assert mask is not None and mask[bar].all() and mask.sum() < 1.5 * barred[bar].size  # (and hollows it touches)
    assert annotation_mask(barred, a_px)[bar].all()
    # zero padding along an edge and a hole clipped to black are vacuum, not annotations
    padded = img.copy()
    padded[:, :12] = img.min()
    holed = img.copy()
    yy, xx = np.mgrid[:320, :320]
    holed[(yy - 160) ** 2 + (xx - 160) ** 2 < 60 ** 2] = img.min()
    assert flat_minimum_mask(padded, a_px) is None and flat_minimum_mask(holed, a_px) is None


def test_colour_marks_on_a_grey_frame():
    grey = np.random.default_rng(0).uniform(0, 200, (64, 64)).astype(np.float32)
    rgb = np.repeat(grey[..., None], 3, axis=-1)
    assert colour_mask(rgb) is None
    rgb[50:54, 5:40] = (255, 255, 0)  # a yellow scale bar
    m = colour_mask(rgb)
    assert m is not None and m[50:54, 5:40].all() and m.sum() == 4 * 35
    # a colour-mapped frame is coloured everywhere: not an annotation
    cmap = np.stack([grey, 0.5 * grey + 60, 255 - grey], axis=-1)
    assert colour_mask(cmap) is None


@pytest.mark.parametrize("rgb, dark", [(False, False), (True, False), (False, True)])
def test_analyze_leaves_a_burned_in_scale_bar_out(rgb, dark):
    sim = simulate("MoTe2", shape=448, pixel_size=0.09, defect_fraction=0.1, seed=11, noise=Noise(12, 20))
    img, bar = _burn_bar(sim.image, dark)
    if rgb:  # the bar in yellow on an RGB export
        img = np.repeat(np.clip(sim.image, 0, None)[..., None], 3, axis=-1)
        img[bar] = (img.max(), img.max(), 0)
    ref = analyze(sim.image, 0.09, device="cpu")
    res = analyze(img, 0.09, device="cpu")
    assert not any("annotation" in w for w in ref.warnings)
    assert any("burned-in annotation" in w for w in res.warnings)
    assert res.vacuum_mask is not None and res.vacuum_mask[bar].all()
    # the cells off the bar read as without it: no bright "substituents" or vacancies on the bar
    s = score_result(res, sim.truth)
    assert s.precision > 0.99 and s.class_accuracy > 0.98
    assert ref.n_cells - 40 < res.n_cells < ref.n_cells
    assert res.site_state_counts()["M"].get("heavier", 0) == 0
    bad = {k: v for k, v in res.counts().items() if k not in ("Perfect", "boundary")}
    ref_bad = {k: v for k, v in ref.counts().items() if k not in ("Perfect", "boundary")}
    assert sum(bad.values()) <= sum(ref_bad.values())


@pytest.mark.parametrize("material, kw", [
    ("MoTe2", dict(noise=Noise(3, 30))),
    ("WS2", dict(noise=Noise(5, 20), pixel_size=0.15)),
    ("WSe2", dict(noise=Noise(4, 30, background=0.3, contamination=0.5))),
    ("MoS2", dict(noise=Noise(12, 5, quantize_8bit=True, subtract_background=True))),
    ("MoTe2", dict(noise=Noise(8, 20), vacuum=Vacuum("hole", 0.4))),
])
def test_column_polarity_tells_bright_columns_from_dark(material, kw):
    kw.setdefault("pixel_size", 0.09)
    sim = simulate(material, shape=384, defect_fraction=0.1, seed=1, **kw)
    from napari_tmd_defects.materials import get_material

    a_px = get_material(material).a / kw["pixel_size"]
    bright = column_polarity(sim.image, a_px)
    assert bright > 0.5
    assert column_polarity(sim.image.max() - sim.image, a_px) < DARK_COLUMNS_POLARITY < 0 < bright
    assert np.isnan(column_polarity(sim.image[:10, :10], a_px))


def test_column_polarity_of_a_clipped_export_stays_above_dark():
    """A MoSe2 frame of the structure preset with a fifth of its pixels at the 8-bit
    ceiling: flat-topped columns leave only the hollows' dark tail, and the plain skew read
    -0.26 (a false DARK COLUMNS warning)."""
    from napari_tmd_defects.datasets import sample_conditions

    rng = np.random.default_rng(704_000)
    for _ in range(3):
        kw = sample_conditions("structure", rng, (384, 384), pixel_size=(0.07, 0.14), rotation="random",
                               defect_fraction=(0.05, 0.15))
    sim = simulate("MoSe2", 384, seed=704_002, **kw)
    assert np.mean(sim.image >= sim.image.max()) > 0.15
    a_px = 3.29 / kw["pixel_size"]
    assert column_polarity(sim.image, a_px) > DARK_COLUMNS_POLARITY


def test_analyze_warns_of_dark_columns():
    sim = simulate("MoTe2", shape=320, pixel_size=0.1, defect_fraction=0.05, seed=2, noise=Noise(12, 20))
    ok = analyze(sim.image, 0.1, device="cpu", classify=False)
    dark = analyze(sim.image.max() - sim.image, 0.1, device="cpu", classify=False)
    assert ok.checks["column_polarity"] > 0.5 and not any("DARK COLUMNS" in w for w in ok.warnings)
    assert dark.checks["column_polarity"] < DARK_COLUMNS_POLARITY
    assert any("DARK COLUMNS" in w for w in dark.warnings)


def test_column_polarity_on_several_threads_equals_one_threads(array_threads):
    sim = simulate("MoTe2", 400, pixel_size=0.1, noise=Noise(10, 15), seed=9)
    array_threads(1)
    one = column_polarity(sim.image, 35.2)
    array_threads(3)
    assert column_polarity(sim.image, 35.2) == one and one > 0


def _fft_inset(img: np.ndarray, a_px: float, corner: str = "top right", size: float = 0.3
               ) -> tuple[np.ndarray, tuple[slice, slice]]:
    """The frame's own log power spectrum pasted into a corner with a bright frame line, as
    figure panels show it: the centre of the spectrum out to 1.6 first-order radii, zoomed
    to fill the inset (its spots then repeat ~1.4 lattice constants apart)."""
    from scipy import ndimage as ndi

    h, w = img.shape
    s = int(size * min(h, w))
    spec = np.log1p(np.fft.fftshift(np.abs(np.fft.fft2(img - img.mean()))))
    half = int(1.6 * min(h, w) / (a_px * np.sqrt(3) / 2))
    crop = spec[h // 2 - half:h // 2 + half, w // 2 - half:w // 2 + half]
    crop = ndi.zoom(crop, s / crop.shape[0], order=1)[:s, :s]
    lo, hi = np.percentile(img, [0.5, 99.5])
    rows = slice(0, s) if corner.startswith("top") else slice(h - s, h)
    cols = slice(w - s, w) if corner.endswith("right") else slice(0, s)
    out = img.astype(np.float32).copy()
    out[rows, cols] = lo + (crop - crop.min()) / np.ptp(crop) * (hi - lo)
    line_r = s if corner.startswith("top") else h - s - 2
    line_c = w - s - 2 if corner.endswith("right") else s
    out[line_r:line_r + 2, cols] = hi
    out[rows, line_c:line_c + 2] = hi
    return out, (rows, cols)


@pytest.mark.parametrize("corner", ["top right", "bottom left"])
def test_an_fft_inset_in_a_corner_is_found(corner):
    sim = simulate("MoTe2", shape=512, pixel_size=0.1, rotation_deg=12.0, defect_fraction=0.1, seed=21,
                   noise=Noise(10, 10))
    img, (rows, cols) = _fft_inset(sim.image, sim.truth.a_px, corner)
    mask = inset_mask(img, estimate_lattice(img))
    assert mask is not None and mask[rows, cols].mean() > 0.99
    # and not much more: the inset grown by a lattice constant and a half
    a = sim.truth.a_px
    grown = np.zeros_like(mask)
    grown[max(0, rows.start - int(1.5 * a)):rows.stop + int(1.5 * a), max(0, cols.start - int(1.5 * a)):cols.stop + int(1.5 * a)] = True
    assert not (mask & ~grown).any()


@pytest.mark.parametrize("kind", ["hole", "edge"])
def test_vacuum_and_grains_are_not_insets(kind):
    sim = simulate("MoTe2", shape=512, pixel_size=0.1, rotation_deg=7.0, defect_fraction=0.1, seed=22,
                   noise=Noise(10, 10), vacuum=Vacuum(kind, 0.3))
    assert inset_mask(sim.image, estimate_lattice(sim.image)) is None
    plain = simulate("WSe2", shape=512, pixel_size=0.08, seed=23, noise=Noise(10, 10))
    assert inset_mask(plain.image, estimate_lattice(plain.image)) is None


def test_analyze_leaves_an_fft_inset_out():
    # read as crystal, the inset's spots made a small second domain with vacancies and a
    # boundary around it
    sim = simulate("MoTe2", shape=512, pixel_size=0.1, rotation_deg=12.0, defect_fraction=0.1, seed=21,
                   noise=Noise(10, 10))
    img, (rows, cols) = _fft_inset(sim.image, sim.truth.a_px)
    res = analyze(img, 0.1, device="cpu")
    assert any("an inset" in w for w in res.warnings)
    area = (rows.stop - rows.start) * (cols.stop - cols.start)
    assert res.inset_mask[rows, cols].mean() > 0.95 and res.inset_mask.sum() < 2 * area  # shown where it is
    assert len(res.sites.domains) == 1 and res.counts().get("boundary", 0) == 0
    centres = 0.5 * (res.x_sites + res.m_sites)
    inside = (centres[:, 1] < rows.stop) & (centres[:, 0] >= cols.start)
    assert not inside.any()
    s = score_result(res, sim.truth)
    assert s.precision > 0.99 and s.class_accuracy > 0.98
    # the cells next to it read as the frame's others (no vacancies along its edge)
    ref = analyze(sim.image, 0.1, device="cpu")
    bad = sum(v for k, v in res.counts().items() if k not in ("Perfect", "boundary"))
    assert bad <= sum(v for k, v in ref.counts().items() if k not in ("Perfect", "boundary"))


def test_an_inset_is_filled_with_the_crystal_continued():
    sim = simulate("MoTe2", shape=384, pixel_size=0.1, rotation_deg=9.0, defect_fraction=0.0, noise=Noise(None, 0),
                   seed=24)
    mask = np.zeros(sim.image.shape, bool)
    mask[:120, -130:] = True
    mask[-100:, :110] = True  # a second inset: each is filled from crystal, not from the other
    filled = fill_inset(sim.image, mask, estimate_lattice(sim.image))
    assert np.array_equal(filled[~mask], sim.image[~mask].astype(np.float32))
    # a perfect lattice moved by whole lattice vectors is itself, to a fraction of a pixel
    for box in ((slice(0, 120), slice(-130, None)), (slice(-100, None), slice(0, 110))):
        assert np.corrcoef(filled[box].ravel(), sim.image[box].ravel())[0, 1] > 0.9


@pytest.mark.parametrize("material, pixel_size", [("MoTe2", 0.09), ("WSe2", 0.12), ("MoS2", 0.06), ("WS2", 0.15)])
def test_a_fourier_filtered_frame_is_told_from_a_raw_one(material, pixel_size):
    from scipy import ndimage as ndi

    sim = simulate(material, shape=384, pixel_size=pixel_size, defect_fraction=0.1, seed=3, noise=Noise(12, 20))
    img, a_px = sim.image.astype(np.float32), sim.truth.a_px
    lat = estimate_lattice(img)

    def power(im):
        return between_reflections_power(im, estimate_lattice(im))

    # raw and smoothed frames (a Gaussian keeps the power between the reflections) are not
    # taken for filtered ...
    assert power(img) > 5 * FOURIER_FILTERED_POWER
    assert power(ndi.gaussian_filter(img, 2.0)) > 5 * FOURIER_FILTERED_POWER
    bragg = fourier_filter(img, a_px)
    assert between_reflections_power(bragg, lat) < FOURIER_FILTERED_POWER / 10
    # ... a filtered frame is, also cropped after filtering and exported as 8 bits
    cut = fourier_filter(img, a_px, radius=0.2)[13:-40, 5:-21]
    cut = np.round(255 * (cut - cut.min()) / np.ptp(cut))
    assert power(cut) < FOURIER_FILTERED_POWER
    assert np.isnan(between_reflections_power(img[:40, :40], lat))


def test_analyze_warns_of_a_fourier_filtered_frame():
    sim = simulate("MoTe2", shape=320, pixel_size=0.1, defect_fraction=0.1, seed=2, noise=Noise(12, 20))
    ok = analyze(sim.image, 0.1, device="cpu", classify=False)
    bragg = analyze(fourier_filter(sim.image, sim.truth.a_px), 0.1, device="cpu", classify=False)
    assert ok.checks["between_reflections_power"] > 10 * FOURIER_FILTERED_POWER
    assert not any("FOURIER FILTERED" in w for w in ok.warnings)
    assert bragg.checks["between_reflections_power"] < FOURIER_FILTERED_POWER
    assert any("FOURIER FILTERED" in w for w in bragg.warnings)


def _false_coloured(img: np.ndarray, cmap: str) -> tuple[np.ndarray, np.ndarray]:
    """``(rgb uint8, the 8-bit index each pixel was coloured at)``: a frame through a
    matplotlib colour map."""
    import matplotlib

    idx = np.round(255 * (img - img.min()) / np.ptp(img)).astype(np.uint8)
    lut = np.round(255 * matplotlib.colormaps[cmap](np.linspace(0, 1, 256))[:, :3]).astype(np.uint8)
    return lut[idx], idx


@pytest.mark.parametrize("cmap", ["jet", "turbo", "viridis", "inferno", "hot"])
def test_a_false_coloured_frame_is_read_back_through_its_colour_map(cmap):
    import io as _io

    from PIL import Image

    sim = simulate("MoTe2", shape=256, pixel_size=0.09, defect_fraction=0.1, seed=4, noise=Noise(12, 20))
    rgb, idx = _false_coloured(sim.image, cmap)
    grey, name = rgb_to_grey(rgb)
    assert name == cmap and np.abs(grey - idx).max() <= 2  # jet repeats a few 8-bit colours

    def jpeg(a: np.ndarray) -> np.ndarray:
        buf = _io.BytesIO()
        Image.fromarray(a).save(buf, "JPEG", quality=85)
        return np.asarray(Image.open(buf))

    # through JPEG's errors: the map (or one that reads alike), the intensities about as close
    # to the original as a grey JPEG's (a rainbow map's colour errors cost more)
    grey, name = rgb_to_grey(jpeg(rgb))
    assert name in {"hot": ("hot", "gist_heat", "afmhot"), "inferno": ("inferno", "magma")}.get(cmap, (cmap,))
    baseline = np.corrcoef(jpeg(idx).astype(float).ravel(), idx.ravel())[0, 1]
    lost = 0.1 if cmap in ("jet", "turbo") else 0.05  # a flat stretch of the map amplifies the errors
    assert np.corrcoef(grey.ravel(), idx.ravel())[0, 1] > baseline - lost
    # a grey frame, and one with a coloured bar on it, are read by their luminance
    g = np.repeat(idx[..., None], 3, axis=-1)
    assert rgb_to_grey(g) == (pytest.approx(idx.astype(np.float32)), None)
    g[200:206, 10:120] = (255, 200, 0)
    assert rgb_to_grey(g)[1] is None
    # a frame coloured all over through an unlisted map is read by its luminance, and named so
    other, _ = _false_coloured(sim.image, "twilight")
    grey, name = rgb_to_grey(other)
    assert name == UNKNOWN_COLOUR_MAP and np.allclose(grey, other @ np.array([0.299, 0.587, 0.114]), atol=1e-3)


def test_analyze_reads_a_jet_coloured_frame_like_the_grey_one():
    sim = simulate("MoTe2", shape=320, pixel_size=0.09, defect_fraction=0.15, seed=5, noise=Noise(12, 20))
    rgb, idx = _false_coloured(sim.image, "jet")
    grey = analyze(idx, 0.09, device="cpu")
    jet = analyze(rgb, 0.09, device="cpu")
    assert jet.counts() == grey.counts() and any("'jet' colour map" in w for w in jet.warnings)
    # read by its luminance, jet's yellow flanks outshine its red cores
    lum = analyze(rgb.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32), 0.09, device="cpu")
    assert lum.counts() != grey.counts()
