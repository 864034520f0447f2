"""Overlay pictures: title, legend panel, scale bar, palettes, cells in their lattice frames."""

import numpy as np
import pytest
from skimage.draw import polygon

from napari_tmd_defects.pipeline import analyze
from napari_tmd_defects.simulation import Noise, simulate
from napari_tmd_defects.visualization import (
    PALETTES,
    nice_scale_bar_nm,
    overlay_rgb,
    result_title,
    save_truth_overlay,
    truth_outlines,
    truth_overlay,
    truth_title,
)


@pytest.fixture(scope="module")
def rotated():
    return simulate("MoTe2", 256, pixel_size=0.1, rotation_deg=23, defect_fraction=0.3, noise=Noise(20, 10), seed=5)


def test_title_band_legend_panel_and_scale_bar():
    img = np.tile(np.linspace(1.0, 0.0, 256), (256, 1))  # bright on the left: a panel shows as darker
    labels = np.array([0, 1, 1, 3])
    bare = overlay_rgb(img, labels=labels, legend=False)
    pic = overlay_rgb(img, labels=labels, title="MoTe2, 0.1 Å/px (given)", pixel_size=0.1)
    assert bare.shape == (1024, 1024, 3)
    band = pic.shape[0] - bare.shape[0]
    assert 20 < band < 80 and pic.shape[1] == 1024
    top = pic[:band].astype(int)
    assert np.median(top) < 40 and top.max() > 200  # dark band with light text
    body = pic[band:].astype(int)
    # legend: a semi-opaque panel in the top-left corner (darker, not black)
    panel = body[20:60, 20:60].mean() / bare[20:60, 20:60].astype(int).mean()
    assert 0.15 < panel < 0.6
    # scale bar: 256 px at 0.1 Å/px = 2.56 nm wide -> a 0.5 nm bar = 50 px, x4 = 200 px of white
    corner = body[-80:, -300:]
    rows = np.flatnonzero((corner == 255).all(axis=2).sum(axis=1) > 100)
    assert len(rows) >= 3
    run = (corner[rows[0]] == 255).all(axis=1).sum()
    assert run == pytest.approx(0.5 / 2.56 * 1024, abs=3)


def test_nice_scale_bar_lengths():
    assert nice_scale_bar_nm(3.84) == pytest.approx(0.5)
    assert nice_scale_bar_nm(10.0) == pytest.approx(2.0)
    assert nice_scale_bar_nm(0.9) == pytest.approx(0.1)
    assert nice_scale_bar_nm(400.0) == pytest.approx(50.0)
    with pytest.raises(ValueError):
        nice_scale_bar_nm(0.0)


def test_colorblind_palette_differs_and_is_distinct():
    img = np.zeros((64, 64))
    boxes = np.array([[10.0, 10.0, 40.0, 40.0]])
    paper = overlay_rgb(img, boxes=boxes, labels=np.array([1]), legend=False, scale=1.0)
    safe = overlay_rgb(img, boxes=boxes, labels=np.array([1]), legend=False, scale=1.0, palette="colorblind")
    assert tuple(paper[10, 25]) == PALETTES["paper"]["classes"][1]
    assert tuple(safe[10, 25]) == PALETTES["colorblind"]["classes"][1] == (213, 94, 0)
    cols = PALETTES["colorblind"]["classes"]
    assert len(set(cols)) == len(cols) == 6
    with pytest.raises(ValueError, match="palette"):
        overlay_rgb(img, labels=np.array([1]), palette="rainbow")
    with pytest.raises(ValueError, match="cell_style"):
        overlay_rgb(img, boxes=boxes, labels=np.array([1]), cell_style="blob")
    markers = overlay_rgb(img, boxes=boxes, labels=np.array([1]), legend=False, scale=1.0, cell_style="marker")
    assert tuple(markers[25, 25]) == PALETTES["paper"]["classes"][1] and tuple(markers[10, 25]) == (0, 0, 0)


def _coverage(quads, shape):
    cover = np.zeros(shape, np.int32)
    for q in quads:
        rr, cc = polygon(q[:, 1], q[:, 0], shape)
        cover[rr, cc] += 1
    return cover


def test_truth_cells_follow_the_rotated_lattice(rotated):
    t = rotated.truth
    quads = truth_outlines(t)
    # the same outlines as the analysis draws for the found cells
    res = analyze(rotated.image, 0.1, use_detector=False, classify=False)
    found = res.cell_outlines()
    mid_t = 0.5 * (t.cell_x_site + t.cell_m_site)
    mid_r = 0.5 * (res.x_sites + res.m_sites)
    j = np.argmin(np.linalg.norm(mid_r[:, None] - mid_t[None], axis=-1), axis=1)
    assert np.median(np.abs(found - quads[j])) < 0.05 * t.a_px
    # cells in their frames hardly overlap; axis-aligned boxes on a rotated frame do
    boxes = t.cell_box
    as_quads = np.stack([boxes[:, [0, 1]], boxes[:, [2, 1]], boxes[:, [2, 3]], boxes[:, [0, 3]]], axis=1)
    rotated_overlap = np.mean(_coverage(quads, t.shape) > 1)
    box_overlap = np.mean(_coverage(as_quads, t.shape) > 1)
    assert rotated_overlap < 0.02 and box_overlap > 0.1


def test_truth_picture_says_it_is_the_truth(rotated, tmp_path):
    t = rotated.truth
    title = truth_title(t)
    assert title.startswith("Ground truth") and "MoTe2" in title and "0.1 Å/px" in title
    pic = truth_overlay(rotated.image, t, palette="colorblind")
    assert pic.shape[0] > pic.shape[1]  # the title band on top of a square frame
    p = save_truth_overlay(tmp_path / "truth.png", rotated.image, t)
    assert p.stat().st_size > 10_000


def test_result_title_names_the_pixel_size_source(rotated):
    res = analyze(rotated.image, None, use_detector=False, classify=False)
    assert res.pixel_size_source == "estimated"
    title = result_title(res, "frame.tif")
    assert title.startswith("frame.tif: MoTe2, ") and "Å/px (estimated from the lattice)" in title
    assert float(title.split(", ")[1].split(" ")[0]) == pytest.approx(0.1, rel=0.01)
    assert f"{res.n_cells} cells" in title
