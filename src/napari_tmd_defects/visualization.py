"""Overlay pictures (PNG) of cells coloured by class, for reports and previews.

Pure numpy + Pillow; no Qt, no matplotlib.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from .materials import CLASS_COLORS, get_material

__all__ = ["to_uint8", "overlay_rgb", "save_overlay"]


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
) -> np.ndarray:
    """RGB picture of ``image`` with cells coloured by class (paper colours).

    Parameters
    ----------
    image : (rows, cols) array
    boxes : (N, 4) array, optional
        Cell boxes ``(x_min, y_min, x_max, y_max)`` in px.
    labels : (N,) int array, optional
        Class ids (0..5; -2 = boundary, drawn white; -1 = unclassified, green); cells are
        green when absent.
    points : dict name -> (K, 2) array, optional
        Markers (x, y) in px, e.g. ``{"X": ..., "M": ...}`` drawn as small dots.
    hexagons : (K, 4) array, optional
        Hexagon boxes drawn in thin cyan.
    scale : float, optional
        Up/down-scaling of the picture (default: so that the long side is ~1024 px).
    legend : bool
        Draw a class legend with counts in the top-left corner.
    show_perfect : bool
        Draw Perfect cells (grey) too.
    quads : (N, 4, 2) array, optional
        Cell outlines (x, y px corners) drawn instead of ``boxes``: each cell in its own
        lattice frame, so rotated domains do not turn into overlapping boxes.
    lines : list of (K, 2) arrays, optional
        Polylines (x, y px), e.g. domain boundaries, drawn in bright green.
    rings : dict name -> ((K, 2) array, RGB), optional
        Sites (x, y px) drawn as rings of a colour and listed in the legend with their
        number, e.g. site states other than the host's (``{"W": (xy, (255, 140, 0))}``).
    """
    img8 = to_uint8(image)
    h, w = img8.shape
    if scale is None:
        scale = min(4.0, 1024.0 / max(h, w))
    pic = Image.fromarray(img8).convert("RGB")
    if scale != 1.0:
        pic = pic.resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.BILINEAR)
    draw = ImageDraw.Draw(pic)
    lw = max(1, round(scale * 0.6))

    def sc(b):
        return [(b[0] + 0.5) * scale, (b[1] + 0.5) * scale, (b[2] + 0.5) * scale, (b[3] + 0.5) * scale]

    def colour(lab):
        if lab is None or lab == -1:
            return (0, 220, 0)
        if lab == -2:
            return BOUNDARY_RGB
        return tuple(int(255 * c) for c in CLASS_COLORS[int(lab) % len(CLASS_COLORS)])

    if hexagons is not None:
        for b in np.asarray(hexagons).reshape(-1, 4):
            draw.rectangle(sc(b), outline=(0, 200, 220), width=1)
    shapes = None
    if quads is not None:
        shapes = np.asarray(quads, float).reshape(-1, 4, 2)
    elif boxes is not None:
        shapes = np.asarray(boxes, float).reshape(-1, 4)
    if shapes is not None:
        labs = None if labels is None else np.asarray(labels).reshape(-1)
        order = np.argsort(labs, kind="stable") if labs is not None else range(len(shapes))
        for k in order:
            lab = None if labs is None else int(labs[k])
            if lab == 0 and not show_perfect:
                continue
            width = lw if lab is None or lab <= 0 else lw + 1
            if shapes.ndim == 3:
                pts = [((x + 0.5) * scale, (y + 0.5) * scale) for x, y in shapes[k]]
                draw.line(pts + pts[:1], fill=colour(lab), width=width)
            else:
                draw.rectangle(sc(shapes[k]), outline=colour(lab), width=width)
    if lines:
        for ln in lines:
            pts = [((x + 0.5) * scale, (y + 0.5) * scale) for x, y in np.asarray(ln, float).reshape(-1, 2)]
            if len(pts) >= 2:
                draw.line(pts, fill=BOUNDARY_LINE_RGB, width=max(2, lw + 1))
    if points:
        palette = [(255, 80, 80), (80, 160, 255), (255, 255, 0), (0, 255, 0)]
        r = max(1.5, scale * 0.8)
        for n, (name, pts) in enumerate(points.items()):
            col = palette[n % len(palette)]
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
    if legend and labels is not None:
        names = get_material(material).class_names
        lab = np.asarray(labels, int).reshape(-1)
        counts = np.bincount(lab[lab >= 0], minlength=len(names))
        rows = [(colour(k), f"{name}: {counts[k]}") for k, name in enumerate(names)]
        n_bnd = int(np.sum(lab == -2))
        if n_bnd:
            rows.append((BOUNDARY_RGB, f"boundary: {n_bnd}"))
        if lines:
            rows.append((BOUNDARY_LINE_RGB, "domain boundary"))
        for name, (pts, col) in (rings or {}).items():
            rows.append((tuple(int(c) for c in col), f"site {name}: {len(np.asarray(pts).reshape(-1, 2))}"))
        y = 4
        for col, text in rows:
            draw.rectangle([4, y, 16, y + 10], fill=col, outline=(0, 0, 0))
            draw.text((20, y - 1), text, fill=(255, 255, 255), stroke_width=1, stroke_fill=(0, 0, 0))
            y += 14
    return np.asarray(pic)


def save_overlay(path: str | Path, image: np.ndarray, **kwargs) -> Path:
    """Write :func:`overlay_rgb` of ``image`` to a PNG file."""
    path = Path(path)
    Image.fromarray(overlay_rgb(image, **kwargs)).save(path)
    return path
