"""Reading and writing images and tables.

Readers return ``(image, metadata)`` where ``image`` is a 2-D float32 array and
``metadata`` holds at least ``pixel_size_A`` (Å/px, or None when the file does not say)
and ``source`` (the path). TIFF is read with tifffile, PNG/JPEG exports with Pillow
(RGB converted to grey), Nion Swift files (``.ndata``/``.ndata1``, ``.h5``, ``.nhdf``)
here, other microscope formats (DM3/DM4, EMD, ...) through rosettasciio.

A file holding several images (a Velox EMD with HAADF, DF and BF images or EDS maps, a
Nion export of several channels) is read at its HAADF image, else its other annular
dark-field one (:func:`choose_image`); ``metadata["signal"]`` names the image read and
``metadata["warnings"]`` says which others the file holds.
"""

from __future__ import annotations

import io
import json
import os
import re
import tempfile
import zipfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import numpy as np

__all__ = [
    "IMAGE_SUFFIXES",
    "ImageReadError",
    "atomic_write",
    "choose_image",
    "read_image",
    "read_stack",
    "write_tiff",
]

#: File endings handled by :func:`read_image`.
IMAGE_SUFFIXES = (
    ".tif", ".tiff", ".png", ".jpg", ".jpeg", ".bmp",
    ".dm3", ".dm4", ".emd", ".ser", ".mrc", ".hspy", ".hdf5", ".zspy", ".npy",
    ".ndata", ".ndata1", ".h5", ".nhdf",
)
_NION_SUFFIXES = (".ndata", ".ndata1", ".h5", ".nhdf")
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


def _to_grey(arr: np.ndarray, source: str, meta: dict[str, Any] | None = None) -> np.ndarray:
    """The 2-D float32 image of a file's array. RGB: grey (:func:`~.exports.rgb_to_grey`),
    and where coloured marks lie on a grey frame (a scale bar, labels), the RGB original kept
    as ``meta["rgb"]`` for :func:`~.pipeline.analyze` to find them; a false-coloured frame's
    colour map named in ``meta["warnings"]``."""
    a = np.asarray(arr)
    if a.ndim == 3 and a.shape[-1] in (3, 4):
        from .exports import colour_mask, false_colour_note, rgb_to_grey

        rgb = a
        a, cmap = rgb_to_grey(rgb)
        if meta is not None:
            if cmap is not None:
                meta.setdefault("warnings", []).append(f"{Path(source).name} {false_colour_note(cmap)}")
            elif colour_mask(rgb) is not None:
                meta["rgb"] = rgb
    elif a.ndim == 3 and a.shape[0] == 1:
        a = a[0]
    if a.ndim != 2:
        raise ImageReadError(
            f"{source}: expected a 2-D image (or RGB), got an array of shape {a.shape}; for a series of frames, "
            f"analyse each frame, or align and average them (tmd-defects analyze --stack sum; read_stack, "
            f"stacks.align_and_sum)"
        )
    if a.dtype.kind not in "biuf":
        raise ImageReadError(f"{source}: unsupported pixel type {a.dtype}")
    return a.astype(np.float32)


def _detector_rank(title: str) -> int:
    """How fit an image is for the analysis, by its title (a detector's name): 3 HAADF,
    2 another annular dark field (MAADF, LAADF, ADF, DF4, DF-S), 0 bright field or
    differential phase contrast (BF, ABF, DPC, iDPC: columns dark or not Z-contrast),
    1 anything else (no title, an EDS map, ...)."""
    t = title.upper()
    if "HAADF" in t:
        return 3
    if re.search(r"(^|[^A-Z])(I|D)?DPC|(^|[^A-Z])A?BF($|[^A-Z])", t):
        return 0
    if re.search(r"(^|[^A-Z])(MA|LA)?ADF|(^|[^A-Z])DF($|[^A-Z]|\d)", t):
        return 2
    return 1


def choose_image(images: list[tuple[str, np.ndarray, float | None]], source: str, stacks: bool = False
                 ) -> tuple[np.ndarray, float | None, dict[str, Any]]:
    """The image of a file to analyse, of ``(title, array, pixel size Å/px)`` in the
    file's order: the first 2-D (or RGB) one of the best detector (:func:`_detector_rank`:
    HAADF, then another ADF, then untitled or other images, bright field last);
    ``stacks=True``: a stack of frames ``(n, rows, cols)`` is as good as a plane.

    Returns ``(array, pixel size, metadata)``: ``signal`` (the title read) and, where the
    file holds several images, ``signals`` (all titles) and ``warnings`` (which was read).

    Raises
    ------
    ImageReadError
        If the file holds no image, or only stacks (the message gives their sizes).
    """
    if not images:
        raise ImageReadError(f"{source}: the file holds no image")
    planes = [im for im in images if im[1].ndim == 2 or (im[1].ndim == 3 and (stacks or im[1].shape[-1] in (3, 4)))]
    if not planes:
        title, data, _ = images[0]
        raise ImageReadError(
            f"{source}: holds a stack of {data.shape[0]} frames{f' ({title})' if title else ''}; analyse each "
            "frame, or align and average them (tmd-defects analyze --stack sum; read_stack, stacks.align_and_sum)")
    best = max(range(len(planes)), key=lambda k: (_detector_rank(planes[k][0]), -k))
    title, data, px = planes[best]
    meta: dict[str, Any] = {"signal": title}
    if len(images) > 1:
        titles = [im[0] or "untitled" for im in images]
        meta["signals"] = titles
        note = f"{Path(source).name} holds {len(images)} images ({', '.join(titles)}): read '{title or 'untitled'}'"
        if _detector_rank(title) < 2:
            note += ", not an annular dark-field image: columns may not read by their Z"
        meta["warnings"] = [note]
    return data, px, meta


def read_image(path: str | Path) -> tuple[np.ndarray, dict[str, Any]]:
    """Read a 2-D image and its pixel size.

    Returns
    -------
    image : (rows, cols) float32 array
    metadata : dict
        ``pixel_size_A`` (Å/px or None), ``source``, ``format``; for a file of several
        images ``signal``, ``signals`` and ``warnings`` (:func:`choose_image`); for an RGB
        frame with coloured marks on grey, ``rgb`` (the original, which
        :func:`~.pipeline.analyze` takes to find them); for a false-coloured one, a warning
        naming the colour map it was read back through.

    Raises
    ------
    FileNotFoundError
        If the file does not exist.
    ImageReadError
        If the file cannot be read as a 2-D image (the message names the file; a stack
        of frames: :func:`read_stack`).
    """
    arr, meta = _read_array(path, stacks=False)
    return _to_grey(arr, meta["source"], meta), meta


def read_stack(path: str | Path) -> tuple[np.ndarray, dict[str, Any]]:
    """Read a file's frames: a stack (a multi-page TIFF, a 3-D ``.npy``, a DM, EMD or Nion
    series) as ``(frames, rows, cols)`` float32, a single image as one frame; metadata as
    :func:`read_image`'s, plus ``n_frames``.

    Raises
    ------
    FileNotFoundError, ImageReadError
        As :func:`read_image`.
    """
    arr, meta = _read_array(path, stacks=True)
    a = np.asarray(arr)
    if a.ndim == 3 and a.shape[-1] not in (3, 4):
        if a.dtype.kind not in "biuf":
            raise ImageReadError(f"{meta['source']}: unsupported pixel type {a.dtype}")
        stack = a.astype(np.float32)
    else:
        stack = _to_grey(a, meta["source"], meta)[None]
    meta["n_frames"] = len(stack)
    return stack, meta


def _read_array(path: str | Path, stacks: bool) -> tuple[np.ndarray, dict[str, Any]]:
    """A file's array as stored (2-D, RGB, or with ``stacks`` a stack of frames) and its
    metadata (:func:`read_image`)."""
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
        elif suffix in _NION_SUFFIXES or suffix in _RSCIIO_SUFFIXES:
            images = _read_nion(p) if suffix in _NION_SUFFIXES else _read_rsciio(p)
            arr, meta["pixel_size_A"], more = choose_image(images, str(p), stacks=stacks)
            meta.update(more)
        else:
            from PIL import Image

            with Image.open(p) as im:
                arr = np.asarray(im.convert("RGB") if im.mode in ("P", "CMYK", "YCbCr") else im)
    except ImageReadError:
        raise
    except Exception as exc:  # any parser failure becomes one clear message
        raise ImageReadError(f"{p}: cannot read as an image ({type(exc).__name__}: {exc})") from exc
    return arr, meta


def _pixel_size_from_calibration(cal: dict | None) -> float | None:
    """Å/px of one axis' calibration ``{"scale", "units"}`` (None without a length unit)."""
    if not cal:
        return None
    unit = str(cal.get("units", "")).strip().lower().replace("å", "a").replace("µ", "u")
    scale = cal.get("scale")
    if unit in _UNIT_TO_A and scale and np.isfinite(float(scale)) and float(scale) > 0:
        return float(scale) * _UNIT_TO_A[unit]
    return None


def _nion_image(props: dict, data: np.ndarray) -> tuple[str, np.ndarray, float | None]:
    """``(title, array, Å/px)`` of one Nion Swift data item from its properties."""
    cals = props.get("dimensional_calibrations") or props.get("spatial_calibrations") or []
    px = _pixel_size_from_calibration(cals[-1]) if len(cals) >= 2 else None
    title = str(props.get("title") or "")
    if not title:  # the acquisition channel, where the item was never renamed
        hw = (props.get("metadata") or {}).get("hardware_source") or {}
        title = str(hw.get("channel_name") or hw.get("hardware_source_name") or "")
    return title, np.asarray(data), px


def _read_nion(p: Path) -> list[tuple[str, np.ndarray, float | None]]:
    """The data items of a Nion Swift file: ``.ndata``/``.ndata1`` (a zip of ``data.npy``
    and ``metadata.json``), ``.h5`` (one item: dataset ``data`` with its properties as
    JSON) or ``.nhdf`` (an export: group ``data`` of items)."""
    if p.suffix.lower() in (".ndata", ".ndata1"):
        with zipfile.ZipFile(p) as z:
            names = set(z.namelist())
            if "data.npy" not in names:
                raise ImageReadError(f"{p}: not a Nion Swift data file (no data.npy in the archive)")
            props = json.loads(z.read("metadata.json")) if "metadata.json" in names else {}
            data = np.load(io.BytesIO(z.read("data.npy")), allow_pickle=False)
        return [_nion_image(props, data)]
    import h5py

    with h5py.File(p, "r") as f:
        node = f.get("data")
        if isinstance(node, h5py.Dataset) and "properties" in node.attrs:
            return [_nion_image(json.loads(node.attrs["properties"]), node[()])]
        if isinstance(node, h5py.Group):
            items = [node[k] for k in sorted(node.keys(), key=lambda k: (len(k), k))]
            items = [d for d in items if isinstance(d, h5py.Dataset) and "properties" in d.attrs]
            if items:
                return [_nion_image(json.loads(d.attrs["properties"]), d[()]) for d in items]
    raise ImageReadError(
        f"{p}: not a Nion Swift HDF5 file (no 'data' with its properties); "
        "export the frame as TIFF, or save it as .hspy/.emd")


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


def _read_rsciio(p: Path) -> list[tuple[str, np.ndarray, float | None]]:
    """The images of a file rosettasciio reads, ``(title, array, Å/px)`` in its order."""
    reader = _rsciio_reader(p.suffix)
    if reader is None:
        raise ImageReadError(
            f"{p}: reading {p.suffix} files needs rosettasciio (pip install rosettasciio)"
        )
    # a Velox EMD: its images and EDS maps only, not its spectrum image (GBs, and the
    # optional ``sparse`` package to read it)
    kwargs = {"select_type": "images"} if p.suffix.lower() == ".emd" else {}
    out = []
    for sig in reader(str(p), **kwargs):
        data = np.asarray(sig["data"])
        if data.ndim < 2:
            continue  # a spectrum
        px = None
        axes = [ax for ax in sig.get("axes", []) if ax.get("navigate") is not True] or sig.get("axes", [])
        if len(axes) >= 2:
            px = _pixel_size_from_calibration(axes[-1])
        title = str(((sig.get("metadata") or {}).get("General") or {}).get("title") or "")
        out.append((title, data, px))
    return out
