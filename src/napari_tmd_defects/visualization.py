"""Overlay pictures (PNG) of cells coloured by class, for reports, previews and talks.

A picture carries what a reader needs without the software: a title (material, pixel
size and where it came from), a legend with the count of every class on a semi-opaque
panel, and a scale bar in nm. Cells are drawn as outlines in their own lattice frame
(or as site markers), so rotated lattices do not turn into a mesh of overlapping boxes.
Two palettes: the paper's colours and a colour-blind-safe one (Okabe–Ito).

Pure numpy + Pillow; no Qt, no matplotlib (its DejaVu Sans font is used when present,
for Å and superscripts).
"""

from __future__ import annotations

import importlib.util
import math
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from .materials import CLASS_COLORS, get_material

if TYPE_CHECKING:  # pragma: no cover
    from .analysis import Result
    from .simulation import GroundTruth

__all__ = [
    "PALETTES", "class_colors", "nice_scale_bar_nm", "overlay_rgb", "result_overlay", "result_title", "save_overlay",
    "save_result_overlay", "save_truth_overlay", "state_colors", "to_uint8", "truth_outlines", "truth_overlay",
    "truth_title",
]


def to_uint8(image: np.ndarray, low: float = 0.5, high: float = 99.5) -> np.ndarray:
    """Contrast-stretch a 2-D image between two percentiles to uint8 (NaNs -> 0)."""
    img = np.asarray(image, dtype=float)
    finite = np.isfinite(img)
    if not finite.any():
        return np.zeros(img.shape, np.uint8)
    lo, hi = np.percentile(img[finite], [low, high])
    if hi <= lo:
        hi = lo + 1.0
    out = np.clip((np.where(finite, img, lo) - lo) / (hi - lo), 0.0, 1.0)
    return (out * 255).astype(np.uint8)


#: Colour of cells on a domain boundary (class ``boundary``) and of the boundary lines.
BOUNDARY_RGB = (255, 140, 0)
BOUNDARY_LINE_RGB = (0, 255, 120)

#: Class colours (Perfect and the five defect classes, in class order) and the colours of
#: unclassified cells, boundary cells and boundary lines, per palette. ``paper``: the
#: 2DIP-Net paper's colours; ``colorblind``: Okabe & Ito's colour-blind-safe set.
PALETTES: dict[str, dict[str, tuple]] = {
    "paper": {
        "classes": tuple(tuple(int(round(255 * c)) for c in rgb) for rgb in CLASS_COLORS),
        "unclassified": (0, 220, 0), "boundary": BOUNDARY_RGB, "boundary_line": BOUNDARY_LINE_RGB,
    },
    "colorblind": {
        "classes": ((170, 170, 170), (213, 94, 0), (240, 228, 66), (86, 180, 233), (0, 158, 115),
                    (204, 121, 167)),
        "unclassified": (255, 255, 255), "boundary": (230, 159, 0), "boundary_line": (0, 114, 178),
    },
}


def class_colors(palette: str = "paper") -> dict[str, tuple]:
    """The colours (RGB 0-255) of a palette in :data:`PALETTES`; a clear error otherwise."""
    if palette not in PALETTES:
        raise ValueError(f"unknown palette {palette!r}; choose one of {', '.join(PALETTES)}")
    return PALETTES[palette]


#: Colours of site states (napari ``[site states]`` layer, overlay rings); other species take STATE_CYCLE.
STATE_RGBA = {"vacant": (1.0, 1.0, 1.0, 1.0), "unresolved": (0.55, 0.55, 0.55, 1.0),
              "heavier": (1.0, 0.0, 1.0, 1.0), "lighter": (0.0, 0.9, 0.3, 1.0)}
STATE_CYCLE = ((1.0, 0.55, 0.0, 1.0), (0.0, 0.75, 1.0, 1.0), (0.95, 0.9, 0.1, 1.0), (0.6, 0.3, 1.0, 1.0),
               (0.9, 0.3, 0.3, 1.0), (0.3, 0.9, 0.9, 1.0))


def state_colors(states: np.ndarray) -> np.ndarray:
    """RGBA ``(N, 4)`` of site states: fixed colours for vacant / unresolved / heavier /
    lighter, a cycle over the other species in order of first appearance."""
    others = [v for v in dict.fromkeys(states.tolist()) if v not in STATE_RGBA]
    lut = {**STATE_RGBA, **{v: STATE_CYCLE[k % len(STATE_CYCLE)] for k, v in enumerate(others)}}
    return np.array([lut[v] for v in states.tolist()], float).reshape(-1, 4)


# --------------------------------------------------------------------------- text, scale bar
@lru_cache(maxsize=16)
def _font(size: int, bold: bool = False):
    """DejaVu Sans (matplotlib's copy or the system's) at ``size`` px; Pillow's own font otherwise."""
    name = "DejaVuSans-Bold.ttf" if bold else "DejaVuSans.ttf"
    candidates = []
    spec = importlib.util.find_spec("matplotlib")
    if spec is not None and spec.submodule_search_locations:
        candidates.append(Path(list(spec.submodule_search_locations)[0]) / "mpl-data" / "fonts" / "ttf" / name)
    candidates.append(Path(name))
    for c in candidates:
        try:
            return ImageFont.truetype(str(c), size)
        except OSError:
            continue
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1
        return ImageFont.load_default()


def nice_scale_bar_nm(width_nm: float, fraction: float = 0.2) -> float:
    """A round scale-bar length (1, 2 or 5 × 10^k nm) of at most ``fraction`` of ``width_nm``."""
    if not (width_nm > 0 and math.isfinite(width_nm)):
        raise ValueError(f"width_nm must be a positive number, got {width_nm}")
    target = fraction * width_nm
    k = math.floor(math.log10(target))
    for m in (5, 2, 1):
        if m * 10.0 ** k <= target:
            return m * 10.0 ** k
    return 10.0 ** k


def _panel(pic: Image.Image, box: tuple[float, float, float, float], alpha: int = 170) -> None:
    """Darken ``box`` of ``pic`` (RGB, in place) with a semi-opaque black panel."""
    x0, y0, x1, y1 = (int(round(v)) for v in box)
    x0, y0 = max(0, x0), max(0, y0)
    x1, y1 = min(pic.width, x1), min(pic.height, y1)
    if x1 <= x0 or y1 <= y0:
        return
    region = pic.crop((x0, y0, x1, y1))
    dark = Image.new("RGB", region.size, (0, 0, 0))
    pic.paste(Image.blend(region, dark, alpha / 255.0), (x0, y0))


def _fmt_nm(v: float) -> str:
    return f"{v:g} nm"


def overlay_rgb(
    image: np.ndarray,
    boxes: np.ndarray | None = None,
    labels: np.ndarray | None = None,
    points: dict[str, np.ndarray] | None = None,
    hexagons: np.ndarray | None = None,
    material: str = "MoTe2",
    scale: float | None = None,
    legend: bool = True,
    show_perfect: bool = True,
    quads: np.ndarray | None = None,
    lines: list[np.ndarray] | None = None,
    rings: dict[str, tuple[np.ndarray, tuple[int, int, int]]] | None = None,
    *,
    title: str | None = None,
    pixel_size: float | None = None,
    palette: str = "paper",
    cell_style: str = "outline",
) -> np.ndarray:
    """RGB picture of ``image`` with cells coloured by class.

    Parameters
    ----------
    image : (rows, cols) array
    boxes : (N, 4) array, optional
        Cell boxes ``(x_min, y_min, x_max, y_max)`` in px (axis-aligned: prefer ``quads``
        on rotated lattices).
    labels : (N,) int array, optional
        Class ids (0..5; -2 = boundary; -1 = unclassified); cells take the unclassified
        colour when absent.
    points : dict name -> (K, 2) array, optional
        Markers (x, y) in px, e.g. ``{"X": ..., "M": ...}`` drawn as small dots (and
        listed in the legend).
    hexagons : (K, 4) array, optional
        Hexagon boxes drawn in thin cyan.
    scale : float, optional
        Up/down-scaling of the picture (default: so that the long side is ~1024 px).
    legend : bool
        Draw a class legend with counts on a semi-opaque panel in the top-left corner.
    show_perfect : bool
        Draw Perfect cells too.
    quads : (N, 4, 2) array, optional
        Cell outlines (x, y px corners) drawn instead of ``boxes``: each cell in its own
        lattice frame, so rotated domains do not turn into overlapping boxes.
    lines : list of (K, 2) arrays, optional
        Polylines (x, y px), e.g. domain boundaries.
    rings : dict name -> ((K, 2) array, RGB), optional
        Sites (x, y px) drawn as rings of a colour and listed in the legend with their
        number, e.g. site states other than the host's (``{"W": (xy, (255, 140, 0))}``).
    title : str, optional
        Text on a dark band above the picture (material, pixel size, ...).
    pixel_size : float, optional
        Å/px of ``image``: draws a scale bar in nm in the bottom-right corner.
    palette : {"paper", "colorblind"}
        Class colours (:data:`PALETTES`).
    cell_style : {"outline", "marker"}
        Cells as outlines (``quads`` or ``boxes``) or as a filled marker at each cell's
        centre (defects) and a small dot (Perfect).
    """
    pal = class_colors(palette)
    if cell_style not in ("outline", "marker"):
        raise ValueError(f"cell_style must be 'outline' or 'marker', got {cell_style!r}")
    img8 = to_uint8(image)
    if img8.ndim != 2:
        raise ValueError(f"image must be 2-D, got shape {img8.shape}")
    h, w = img8.shape
    if scale is None:
        scale = min(4.0, 1024.0 / max(h, w))
    pic = Image.fromarray(img8).convert("RGB")
    if scale != 1.0:
        pic = pic.resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.BILINEAR)
    draw = ImageDraw.Draw(pic)
    lw = max(1, round(scale * 0.6))
    fs = max(11, round(max(pic.size) / 60))

    def sc(b):
        return [(b[0] + 0.5) * scale, (b[1] + 0.5) * scale, (b[2] + 0.5) * scale, (b[3] + 0.5) * scale]

    def colour(lab):
        if lab is None or lab == -1:
            return pal["unclassified"]
        if lab == -2:
            return pal["boundary"]
        return pal["classes"][int(lab) % len(pal["classes"])]

    if hexagons is not None:
        for b in np.asarray(hexagons).reshape(-1, 4):
            draw.rectangle(sc(b), outline=(0, 200, 220), width=1)
    shapes = None
    if quads is not None:
        shapes = np.asarray(quads, float).reshape(-1, 4, 2)
    elif boxes is not None:
        shapes = np.asarray(boxes, float).reshape(-1, 4)
    labs = None if labels is None else np.asarray(labels).reshape(-1)
    if shapes is not None:
        order = np.argsort(labs, kind="stable") if labs is not None else range(len(shapes))
        for k in order:
            lab = None if labs is None else int(labs[k])
            if lab == 0 and not show_perfect:
                continue
            col = colour(lab)
            width = lw if lab is None or lab <= 0 else lw + 1
            corners = shapes[k] if shapes.ndim == 3 else np.array(
                [[shapes[k][0], shapes[k][1]], [shapes[k][2], shapes[k][1]],
                 [shapes[k][2], shapes[k][3]], [shapes[k][0], shapes[k][3]]])
            pts = [((x + 0.5) * scale, (y + 0.5) * scale) for x, y in corners]
            if cell_style == "marker":
                cx, cy = np.mean(pts, axis=0)
                side = min(math.dist(pts[0], pts[1]), math.dist(pts[1], pts[2]))
                r = max(2.0, (0.12 if lab is not None and lab <= 0 else 0.25) * side)
                draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=col, outline=(0, 0, 0))
            elif shapes.ndim == 3:
                draw.line(pts + pts[:1], fill=col, width=width, joint="curve")
            else:
                draw.rectangle(sc(shapes[k]), outline=col, width=width)
    if lines:
        for ln in lines:
            pts = [((x + 0.5) * scale, (y + 0.5) * scale) for x, y in np.asarray(ln, float).reshape(-1, 2)]
            if len(pts) >= 2:
                draw.line(pts, fill=pal["boundary_line"], width=max(2, lw + 1))
    point_cols = [(255, 80, 80), (80, 160, 255), (255, 255, 0), (0, 255, 0)]
    if points:
        r = max(1.5, scale * 0.8)
        for n, (name, pts) in enumerate(points.items()):
            col = point_cols[n % len(point_cols)]
            for x, y in np.asarray(pts).reshape(-1, 2):
                cx, cy = (x + 0.5) * scale, (y + 0.5) * scale
                draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=col)
    if rings:
        r = max(2.0, scale * 1.6)
        for name, (pts, col) in rings.items():
            for x, y in np.asarray(pts).reshape(-1, 2):
                cx, cy = (x + 0.5) * scale, (y + 0.5) * scale
                draw.ellipse([cx - r, cy - r, cx + r, cy + r], outline=tuple(int(c) for c in col),
                             width=max(1, lw))
    if legend and (labs is not None or points or rings):
        rows: list[tuple[tuple, str, str]] = []  # colour, text, swatch kind
        if labs is not None:
            names = get_material(material).class_names
            lab = labs.astype(int)
            counts = np.bincount(lab[lab >= 0], minlength=len(names))
            rows += [(colour(k), f"{name}: {counts[k]}", "box") for k, name in enumerate(names)]
            for value, text in ((-2, "boundary"), (-1, "unclassified")):
                n = int(np.sum(lab == value))
                if n:
                    rows.append((colour(value), f"{text}: {n}", "box"))
        if lines:
            rows.append((pal["boundary_line"], "domain boundary", "line"))
        for n, (name, pts) in enumerate((points or {}).items()):
            rows.append((point_cols[n % len(point_cols)], f"{name} site", "dot"))
        for name, (pts, col) in (rings or {}).items():
            rows.append((tuple(int(c) for c in col), f"site {name}: {len(np.asarray(pts).reshape(-1, 2))}", "ring"))
        _legend(pic, rows, fs)
    if pixel_size is not None and math.isfinite(pixel_size) and pixel_size > 0:
        _scale_bar(pic, w * pixel_size / 10.0, fs)
    if title:
        pic = _with_title(pic, title, fs)
    return np.asarray(pic)


def _legend(pic: Image.Image, rows: list[tuple[tuple, str, str]], fs: int) -> None:
    """Rows of (colour, text, swatch) on a semi-opaque panel in the top-left corner."""
    font = _font(fs)
    draw = ImageDraw.Draw(pic)
    pad, sw, gap = round(0.5 * fs), fs, round(0.35 * fs)
    line_h = round(1.35 * fs)
    text_w = max(draw.textlength(t, font=font) for _, t, _ in rows)
    x0, y0 = round(0.5 * fs), round(0.5 * fs)
    x1, y1 = x0 + 2 * pad + sw + gap + text_w, y0 + 2 * pad + line_h * len(rows) - (line_h - fs)
    _panel(pic, (x0, y0, x1, y1), alpha=185)
    draw = ImageDraw.Draw(pic)
    y = y0 + pad
    for col, text, kind in rows:
        sx, sy = x0 + pad, y + 1
        if kind == "box":
            draw.rectangle([sx, sy, sx + sw - 2, sy + sw - 2], fill=col, outline=(255, 255, 255))
        elif kind == "line":
            draw.line([sx, sy + sw / 2, sx + sw, sy + sw / 2], fill=col, width=max(2, fs // 5))
        elif kind == "dot":
            r = sw / 4
            draw.ellipse([sx + sw / 2 - r, sy + sw / 2 - r, sx + sw / 2 + r, sy + sw / 2 + r], fill=col)
        else:
            draw.ellipse([sx + 2, sy + 2, sx + sw - 4, sy + sw - 4], outline=col, width=2)
        draw.text((sx + sw + gap, y), text, fill=(255, 255, 255), font=font)
        y += line_h


def _scale_bar(pic: Image.Image, width_nm: float, fs: int) -> None:
    """A white scale bar (nm) with its length above it, bottom-right on a semi-opaque panel."""
    bar_nm = nice_scale_bar_nm(width_nm)
    bar_px = bar_nm / width_nm * pic.width
    font = _font(fs, bold=True)
    draw = ImageDraw.Draw(pic)
    label = _fmt_nm(bar_nm)
    tw = draw.textlength(label, font=font)
    pad, thick = round(0.5 * fs), max(4, round(0.35 * fs))
    pw = max(bar_px, tw) + 2 * pad
    ph = 2 * pad + fs + round(0.3 * fs) + thick
    x1, y1 = pic.width - round(0.5 * fs), pic.height - round(0.5 * fs)
    x0, y0 = x1 - pw, y1 - ph
    _panel(pic, (x0, y0, x1, y1), alpha=185)
    draw = ImageDraw.Draw(pic)
    cx = 0.5 * (x0 + x1)
    draw.text((cx - tw / 2, y0 + pad - round(0.1 * fs)), label, fill=(255, 255, 255), font=font)
    by = y1 - pad - thick
    draw.rectangle([cx - bar_px / 2, by, cx + bar_px / 2, by + thick], fill=(255, 255, 255))


def _with_title(pic: Image.Image, title: str, fs: int) -> Image.Image:
    """``pic`` under a dark band holding ``title`` (wrapped onto a second line when long)."""
    font = _font(fs + 2, bold=True)
    probe = ImageDraw.Draw(pic)
    words, lines_, cur = title.split(" "), [], ""
    for word in words:
        cand = f"{cur} {word}".strip()
        if cur and probe.textlength(cand, font=font) > pic.width - fs:
            lines_.append(cur)
            cur = word
        else:
            cur = cand
    lines_.append(cur)
    line_h = round(1.35 * (fs + 2))
    band = line_h * len(lines_) + fs // 2
    out = Image.new("RGB", (pic.width, pic.height + band), (24, 24, 24))
    out.paste(pic, (0, band))
    draw = ImageDraw.Draw(out)
    for k, text in enumerate(lines_):
        draw.text((round(0.5 * fs), fs // 4 + k * line_h), text, fill=(255, 255, 255), font=font)
    return out


def save_overlay(path: str | Path, image: np.ndarray, **kwargs) -> Path:
    """Write :func:`overlay_rgb` of ``image`` to a PNG file."""
    path = Path(path)
    Image.fromarray(overlay_rgb(image, **kwargs)).save(path)
    return path


# --------------------------------------------------------------------------- results and truth
def result_title(result: Result, name: str | None = None) -> str:
    """``name: MoTe2, 0.0900 Å/px (given), 168 cells`` for a picture of ``result``."""
    from .analysis import pixel_size_text

    ps_text = pixel_size_text(result.pixel_size, result.pixel_size_source)
    head = f"{name}: " if name else ""
    return f"{head}{result.material}, {ps_text}, {result.n_cells} cells"


def result_overlay(result: Result, image: np.ndarray, name: str | None = None, palette: str = "paper",
                   cell_style: str = "outline", title: str | None = None) -> np.ndarray:
    """The overlay of an analysis :class:`~.analysis.Result`: cells in their lattice frames,
    domain boundaries, off-host site states, legend with counts, scale bar and a title."""
    lines = result.sites.boundary_lines if result.sites is not None else None
    ps = result.pixel_size if result.pixel_size == result.pixel_size else None
    return overlay_rgb(image, quads=result.cell_outlines(), labels=result.labels, lines=lines,
                       material=result.material, rings=result.state_rings(),
                       title=title or result_title(result, name), pixel_size=ps, palette=palette,
                       cell_style=cell_style)


def save_result_overlay(path: str | Path, result: Result, image: np.ndarray, **kwargs) -> Path:
    """Write :func:`result_overlay` to a PNG file atomically (no half-written file on failure)."""
    from .io import atomic_write

    path = Path(path)
    rgb = result_overlay(result, image, **kwargs)
    with atomic_write(path) as fh:
        Image.fromarray(rgb).save(fh, format="PNG")
    return path


def truth_outlines(truth: GroundTruth, alpha: float = 0.65, beta: float = 0.5) -> np.ndarray:
    """Corners ``(N, 4, 2)`` (x, y px) of every true cell's crop box in its own lattice frame.

    The frame is the rotation and scale that maps the canonical cell's X–M pair onto the
    cell's X and M sites (proper, like the frames of :meth:`.analysis.Result.cell_outlines`),
    so true and found cells are drawn alike.
    """
    from .sites import CANONICAL_PARTNER, canonical_cell_box, cell_box_corners

    x = np.asarray(truth.cell_x_site, float).reshape(-1, 2)
    d = np.asarray(truth.cell_m_site, float).reshape(-1, 2) - x
    a = (d[:, 0] + 1j * d[:, 1]) / complex(*CANONICAL_PARTNER)
    rot = np.stack([np.stack([a.real, -a.imag], -1), np.stack([a.imag, a.real], -1)], 1)  # (N, 2, 2)
    c = cell_box_corners(canonical_cell_box(alpha, beta))
    return np.einsum("nij,kj->nki", rot, c) + x[:, None, :]


def truth_title(truth: GroundTruth) -> str:
    """``Ground truth (simulated): MoTe2, 0.09 Å/px, 168 cells``."""
    return (f"Ground truth (simulated): {truth.material}, {truth.pixel_size:.4g} Å/px, "
            f"{len(truth.cell_label)} cells")


def truth_overlay(image: np.ndarray, truth: GroundTruth, palette: str = "paper", cell_style: str = "outline",
                  sites: bool = True) -> np.ndarray:
    """Picture of a simulated image's ground truth: true cells in their lattice frames,
    coloured by class (boundary cells as boundary), X and M sites, boundaries, legend with
    counts, scale bar and a title that says it is the ground truth."""
    labels = np.asarray(truth.cell_label)
    if getattr(truth, "cell_boundary", None) is not None and len(truth.cell_boundary) == len(labels):
        labels = np.where(truth.cell_boundary, -2, labels)
    return overlay_rgb(
        image, quads=truth_outlines(truth), labels=labels,
        points={"X": truth.cell_x_site, "M": truth.cell_m_site} if sites else None,
        lines=getattr(truth, "boundary_lines", None), material=truth.material,
        title=truth_title(truth), pixel_size=truth.pixel_size, palette=palette, cell_style=cell_style,
    )


def save_truth_overlay(path: str | Path, image: np.ndarray, truth: GroundTruth, **kwargs) -> Path:
    """Write :func:`truth_overlay` to a PNG file."""
    path = Path(path)
    Image.fromarray(truth_overlay(image, truth, **kwargs)).save(path)
    return path
