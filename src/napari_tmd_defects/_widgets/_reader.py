"""Reader contribution: the image formats of :func:`napari_tmd_defects.io.read_image`
(TIFF, PNG/JPEG/BMP exports, NumPy, and DM3/DM4/EMD/SER/MRC via rosettasciio).

The pixel size goes into the layer's ``scale`` (Å per px, ``units`` Å) and into
``metadata["pixel_size_A"]``; files that cannot be read as a 2-D image give None, so
napari tries its other readers.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from ..io import IMAGE_SUFFIXES

LayerData = tuple[Any, dict[str, Any], str]


def get_reader(path: str | list[str]) -> Callable[[str | list[str]], list[LayerData] | None] | None:
    """The reader function for ``path`` (or a list of paths), or None for other files."""
    paths = [path] if isinstance(path, (str, Path)) else list(path)
    if not paths or not all(Path(p).suffix.lower() in IMAGE_SUFFIXES for p in paths):
        return None
    return read_images


def read_images(path: str | list[str]) -> list[LayerData] | None:
    """One image layer per file; None if any file is not a readable 2-D image."""
    from ..io import ImageReadError, read_image

    paths = [path] if isinstance(path, (str, Path)) else list(path)
    out: list[LayerData] = []
    for p in paths:
        try:
            image, meta = read_image(p)
        except (ImageReadError, FileNotFoundError):
            return None
        kwargs: dict[str, Any] = {"name": Path(p).stem, "metadata": meta, "colormap": "gray"}
        px = meta.get("pixel_size_A")
        if px:
            kwargs["scale"] = (px, px)
            kwargs["units"] = ("angstrom", "angstrom")
        out.append((image, kwargs, "image"))
    return out
