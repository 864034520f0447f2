"""Reading and writing images and tables.

Readers return ``(image, metadata)`` where ``image`` is a 2-D float32 array and
``metadata`` holds at least ``pixel_size_A`` (Å/px, or None when the file does not say)
and ``source`` (the path). TIFF is read with tifffile, PNG/JPEG exports with Pillow
(RGB converted to grey); microscope formats (DM3/DM4, EMD, ...) through rosettasciio
when it is installed.
"""

from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import numpy as np

__all__ = [
    "IMAGE_SUFFIXES",
    "ImageReadError",
    "atomic_write",
    "read_image",
    "write_tiff",
]

#: File endings handled by :func:`read_image`.
IMAGE_SUFFIXES = (
    ".tif", ".tiff", ".png", ".jpg", ".jpeg", ".bmp",
    ".dm3", ".dm4", ".emd", ".ser", ".mrc", ".hspy", ".hdf5", ".zspy", ".npy",
)
_RSCIIO_SUFFIXES = (".dm3", ".dm4", ".emd", ".ser", ".mrc", ".hspy", ".hdf5", ".zspy")
_UNIT_TO_A = {"a": 1.0, "å": 1.0, "angstrom": 1.0, "nm": 10.0, "pm": 0.01, "um": 1e4, "µm": 1e4, "micron": 1e4, "m": 1e10}


class ImageReadError(ValueError):
    """An image file could not be read as a 2-D image; the message says why."""


@contextmanager
def atomic_write(path: str | Path, mode: str = "wb") -> Iterator[Any]:
    """Open a temporary file next to ``path`` and rename it over ``path`` on success.

    Nothing is left half-written if the block raises.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        with open(tmp, mode) as fh:
            yield fh
        # mkstemp makes 0600 files; give the result the usual permissions (umask applied)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def write_tiff(path: str | Path, image: np.ndarray, pixel_size: float | None = None) -> Path:
    """Write a 2-D image as a float32 TIFF with the pixel size (Å/px) in its metadata.

    The pixel size goes into the ImageJ ``spacing``/``unit`` entries (in Å) and the
    TIFF resolution tags (pixels per Å), so ImageJ/Fiji and :func:`read_image` agree.
    """
    import tifffile

    img = np.asarray(image, dtype=np.float32)
    kw: dict[str, Any] = {}
    md: dict[str, Any] = {}
    if pixel_size:
        kw["resolution"] = (1.0 / pixel_size, 1.0 / pixel_size)
        md = {"spacing": float(pixel_size), "unit": "angstrom"}
    with atomic_write(path) as fh:
        tifffile.imwrite(fh, img, imagej=True, metadata=md, **kw)
    return Path(path)


def _pixel_size_from_tiff(tif) -> float | None:
    ij = tif.imagej_metadata or {}
    unit = str(ij.get("unit", "")).lower().replace("\\u00c5", "å")
    page = tif.pages[0]
    tags = page.tags
    if "XResolution" in tags:
        num, den = tags["XResolution"].value
        if num and den and num / den > 0:
            px = den / num
            if unit in _UNIT_TO_A:
                return px * _UNIT_TO_A[unit]
    if "spacing" in ij and unit in _UNIT_TO_A:
        return float(ij["spacing"]) * _UNIT_TO_A[unit]
    return None


def _to_grey(arr: np.ndarray, source: str) -> np.ndarray:
    a = np.asarray(arr)
    if a.ndim == 3 and a.shape[-1] in (3, 4):
        rgb = a[..., :3].astype(np.float32)
        a = rgb @ np.array([0.299, 0.587, 0.114], np.float32)
    elif a.ndim == 3 and a.shape[0] == 1:
        a = a[0]
    if a.ndim != 2:
        raise ImageReadError(
            f"{source}: expected a 2-D image (or RGB), got an array of shape {a.shape}; "
            "for a stack, analyse each frame or sum aligned frames first"
        )
    if a.dtype.kind not in "biuf":
        raise ImageReadError(f"{source}: unsupported pixel type {a.dtype}")
    return a.astype(np.float32)


def read_image(path: str | Path) -> tuple[np.ndarray, dict[str, Any]]:
    """Read a 2-D image and its pixel size.

    Returns
    -------
    image : (rows, cols) float32 array
    metadata : dict
        ``pixel_size_A`` (Å/px or None), ``source``, ``format``.

    Raises
    ------
    FileNotFoundError
        If the file does not exist.
    ImageReadError
        If the file cannot be read as a 2-D image (the message names the file).
    """
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"no such file: {p}")
    suffix = p.suffix.lower()
    meta: dict[str, Any] = {"source": str(p), "pixel_size_A": None, "format": suffix.lstrip(".")}
    try:
        if suffix in (".tif", ".tiff"):
            import tifffile

            with tifffile.TiffFile(p) as tif:
                meta["pixel_size_A"] = _pixel_size_from_tiff(tif)
                try:
                    arr = tif.asarray()
                except ValueError:
                    # a compression tifffile cannot decode without extra codecs (LZW, ...):
                    # Pillow decodes the common ones
                    from PIL import Image

                    with Image.open(p) as im:
                        arr = np.asarray(im)
        elif suffix == ".npy":
            arr = np.load(p, allow_pickle=False)
        elif suffix in _RSCIIO_SUFFIXES:
            arr, meta["pixel_size_A"] = _read_rsciio(p)
        else:
            from PIL import Image

            with Image.open(p) as im:
                arr = np.asarray(im.convert("RGB") if im.mode in ("P", "CMYK", "YCbCr") else im)
    except ImageReadError:
        raise
    except Exception as exc:  # any parser failure becomes one clear message
        raise ImageReadError(f"{p}: cannot read as an image ({type(exc).__name__}: {exc})") from exc
    return _to_grey(arr, str(p)), meta


def _rsciio_reader(suffix: str):
    """The rosettasciio ``file_reader`` for a file ending, or None."""
    try:
        from rsciio import IO_PLUGINS
    except ImportError:
        return None
    import importlib

    for plugin in IO_PLUGINS:
        if suffix.lstrip(".").lower() in (e.lower() for e in plugin["file_extensions"]):
            return importlib.import_module(plugin["api"]).file_reader
    return None


def _read_rsciio(p: Path) -> tuple[np.ndarray, float | None]:
    reader = _rsciio_reader(p.suffix)
    if reader is None:
        raise ImageReadError(
            f"{p}: reading {p.suffix} files needs rosettasciio (pip install rosettasciio)"
        )
    signals = reader(str(p))
    images = [s for s in signals if np.asarray(s["data"]).ndim >= 2]
    if not images:
        raise ImageReadError(f"{p}: the file holds no image")
    sig = images[0]
    data = np.asarray(sig["data"])
    px = None
    axes = [ax for ax in sig.get("axes", []) if ax.get("navigate") is not True] or sig.get("axes", [])
    if len(axes) >= 2:
        ax = axes[-1]
        unit = str(ax.get("units", "")).strip().lower().replace("å", "a").replace("µ", "u")
        if unit in _UNIT_TO_A and ax.get("scale"):
            px = float(ax["scale"]) * _UNIT_TO_A[unit]
    if data.ndim == 3 and data.shape[-1] not in (3, 4):
        raise ImageReadError(
            f"{p}: holds a stack of {data.shape[0]} frames; analyse each frame or sum aligned frames"
        )
    return data, px
