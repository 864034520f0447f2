"""Training database of hand-corrected unit cells (for fine-tuning the classifier).

Layout of a database folder ``DIR``::

    DIR/index.csv        one row per corrected cell
    DIR/crops/<id>.npy   2-D float32 crop of the cell box at native sampling

``index.csv`` columns, in this order:

=====================  =======================================================
``crop``               file name of the crop in ``DIR/crops/`` (``<id>.npy``)
``label``              corrected class id (0..5)
``class_name``         class name for the material (e.g. ``V_Te1``)
``material``           e.g. ``MoTe2``
``pixel_size_A``       Å/px of the image the crop was cut from (empty if unknown)
``source``             image identifier (file path or layer name)
``x_min`` ...          cell box ``x_min, y_min, x_max, y_max`` in px of the source
                       image (x = column, y = row, pixel centres at integers)
``confidence_before``  classifier confidence of the label it had (empty if none)
``label_before``       class id before the correction (-1: unclassified)
``timestamp``          ISO 8601, UTC
``normalized``         1 if the crop was cut from the image after
                       ``classification.normalize_image`` (as the classifier
                       sees it), 0 if from the raw image
=====================  =======================================================

Crops are the cell cut out in its own lattice frame at the image's sampling (the napari
tool; so a cell of a turned domain is stored the canonical way up) or the pixels whose
centres lie inside the box; the trainer resamples them like any other cell
(``classification.crops_from_corrections``). The napari correction tool cuts them from
the normalised image whenever the classifier module is installed.

Every write is atomic (crop first, then the index, each through a temporary file that
is renamed into place). Correcting the same cell of the same image again (same
``source``, box centre within a quarter of the box size) updates its row and crop
instead of adding a duplicate; the row keeps the ``label_before`` and
``confidence_before`` of the first correction (what the classifier said). One process
should write a database at a time.

``tmd-defects train-classifier --corrections DIR`` reads it; :func:`load_corrections`
reads it back here.
"""

from __future__ import annotations

import csv
import hashlib
import io as _io
import math
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from .io import atomic_write
from .materials import N_CLASSES, get_material

__all__ = [
    "INDEX_COLUMNS",
    "CorrectionDatabase",
    "crop_box",
    "crop_frame",
    "load_corrections",
    "read_index",
]

#: Columns of ``index.csv``, in order.
INDEX_COLUMNS = (
    "crop", "label", "class_name", "material", "pixel_size_A", "source",
    "x_min", "y_min", "x_max", "y_max", "confidence_before", "label_before", "timestamp", "normalized",
)
_INT_COLUMNS = ("label", "label_before", "normalized")
_FLOAT_COLUMNS = ("pixel_size_A", "x_min", "y_min", "x_max", "y_max", "confidence_before")


def crop_box(image: np.ndarray, box: np.ndarray) -> np.ndarray:
    """Pixels of ``image`` whose centres lie inside ``box``, as a float32 copy.

    Parameters
    ----------
    image : (rows, cols) array
    box : (4,) array
        ``x_min, y_min, x_max, y_max`` in px (x = column, pixel centres at integers).

    Returns
    -------
    (ny, nx) float32 array at the image's own sampling; clipped to the image.

    Raises
    ------
    ValueError
        If the image is not 2-D, the box is malformed or lies outside the image.
    """
    img = np.asarray(image)
    if img.ndim != 2:
        raise ValueError(f"image must be 2-D (rows, cols), got shape {img.shape}")
    b = np.asarray(box, dtype=float).reshape(-1)
    if b.shape != (4,) or not np.all(np.isfinite(b)) or b[2] < b[0] or b[3] < b[1]:
        raise ValueError(f"box must be finite (x_min, y_min, x_max, y_max), got {box!r}")
    h, w = img.shape
    x0, y0 = max(0, math.ceil(b[0] - 1e-6)), max(0, math.ceil(b[1] - 1e-6))
    x1, y1 = min(w - 1, math.floor(b[2] + 1e-6)), min(h - 1, math.floor(b[3] + 1e-6))
    if x1 < x0 or y1 < y0:
        raise ValueError(f"box {np.round(b, 2).tolist()} lies outside the {w}x{h} px image")
    return np.array(img[y0 : y1 + 1, x0 : x1 + 1], dtype=np.float32)


def crop_frame(image: np.ndarray, frame: np.ndarray, box=None) -> np.ndarray:
    """A cell cut out in its own lattice frame at the image's sampling: the canonical
    ``box`` (lattice-constant units; default the cell box) sampled every pixel along the
    cell's axes (bilinear), so a cell of a turned domain is stored the canonical way up.

    Raises
    ------
    ValueError
        If the image is not 2-D, the frame is malformed or the cell lies outside the image.
    """
    from scipy import ndimage as ndi

    from .sites import CANONICAL_BOX

    img = np.asarray(image, dtype=np.float32)
    if img.ndim != 2:
        raise ValueError(f"image must be 2-D (rows, cols), got shape {img.shape}")
    fr = np.asarray(frame, dtype=float)
    if fr.shape != (2, 3) or not np.all(np.isfinite(fr)):
        raise ValueError(f"frame must be a finite (2, 3) affine map, got shape {fr.shape}")
    x0, y0, x1, y1 = CANONICAL_BOX if box is None else box
    lin, org = fr[:, :2], fr[:, 2]
    nx = max(2, int(round((x1 - x0) * np.linalg.norm(lin[:, 0]))))
    ny = max(2, int(round((y1 - y0) * np.linalg.norm(lin[:, 1]))))
    u = x0 + (np.arange(nx) + 0.5) * (x1 - x0) / nx
    v = y0 + (np.arange(ny) + 0.5) * (y1 - y0) / ny
    vv, uu = np.meshgrid(v, u, indexing="ij")
    px = lin[0, 0] * uu + lin[0, 1] * vv + org[0]
    py = lin[1, 0] * uu + lin[1, 1] * vv + org[1]
    h, w = img.shape
    if px.min() < -1 or py.min() < -1 or px.max() > w or py.max() > h:
        raise ValueError("the cell lies (partly) outside the image")
    return ndi.map_coordinates(img, [py, px], order=1, mode="nearest").astype(np.float32)


def _parse_row(raw: dict[str, str], path: Path) -> dict[str, Any]:
    row: dict[str, Any] = dict(raw)
    try:
        for k in _INT_COLUMNS:
            row[k] = int(raw[k])
        for k in _FLOAT_COLUMNS:
            row[k] = float(raw[k]) if raw[k] not in ("", None) else float("nan")
    except (KeyError, ValueError) as exc:
        raise ValueError(f"{path}: malformed row {raw!r} ({exc})") from exc
    return row


def read_index(path: str | Path) -> list[dict[str, Any]]:
    """Rows of a database's ``index.csv`` (``path`` is the folder or the CSV) as dicts.

    Numbers are parsed (ints for labels, floats with NaN for empty cells). A missing
    index gives an empty list.

    Raises
    ------
    ValueError
        If the file lacks columns of :data:`INDEX_COLUMNS` or a row is malformed.
    """
    p = Path(path)
    if p.is_dir() or p.suffix.lower() != ".csv":
        p = p / "index.csv"
    if not p.exists():
        return []
    with open(p, newline="") as fh:
        reader = csv.DictReader(fh)
        missing = [c for c in INDEX_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise ValueError(f"{p}: not a corrections index, missing columns {missing}")
        return [_parse_row(r, p) for r in reader]


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return "" if not math.isfinite(v) else f"{v:.10g}"
    return str(v)


@dataclass
class CorrectionDatabase:
    """A corrections folder (see the module docstring); created on the first write.

    Parameters
    ----------
    path : str or Path
        The database folder.
    """

    path: Path

    def __post_init__(self) -> None:
        self.path = Path(self.path)

    @property
    def index_path(self) -> Path:
        return self.path / "index.csv"

    def rows(self) -> list[dict[str, Any]]:
        """All rows of the index (see :func:`read_index`)."""
        return read_index(self.index_path)

    def __len__(self) -> int:
        return len(self.rows())

    def add(
        self,
        image: np.ndarray,
        box: np.ndarray,
        label: int,
        *,
        material: str = "MoTe2",
        pixel_size: float | None = None,
        source: str = "",
        confidence_before: float | None = None,
        label_before: int = -1,
        timestamp: str | None = None,
        normalized: bool = False,
    ) -> dict[str, Any]:
        """Store one corrected cell (see :meth:`add_many`); returns its row."""
        return self.add_many(
            image, np.asarray(box, float).reshape(1, 4), [label], material=material,
            pixel_size=pixel_size, source=source,
            confidence_before=None if confidence_before is None else [confidence_before],
            label_before=[label_before], timestamp=timestamp, normalized=normalized,
        )[0]

    def add_many(
        self,
        image: np.ndarray,
        boxes: np.ndarray,
        labels,
        *,
        material: str = "MoTe2",
        pixel_size: float | None = None,
        source: str = "",
        confidence_before=None,
        label_before=None,
        timestamp: str | None = None,
        normalized: bool = False,
        frames: np.ndarray | None = None,
        undo: list | None = None,
    ) -> list[dict[str, Any]]:
        """Store corrected cells of one image: crops + index rows, written atomically.

        Parameters
        ----------
        image : (rows, cols) array
            The image the cells belong to.
        boxes : (N, 4) array
            Cell boxes in px of ``image``.
        labels : (N,) ints
            Corrected class ids 0..5.
        material : str
        pixel_size : float, optional
            Å/px.
        source : str
            Identifier of the image (file path or layer name); with the box it decides
            whether a cell is already in the database.
        confidence_before : (N,) floats, optional
        label_before : (N,) ints, optional
            The classifier's class and confidence before the correction (-1: none).
        timestamp : str, optional
            Default: now (UTC).
        normalized : bool
            Whether ``image`` is the output of ``classification.normalize_image``.
        frames : (N, 2, 3) array, optional
            The cells' affine frames (``Result.frames``): the crops are then cut in each
            cell's own frame (:func:`crop_frame`), the canonical way up whatever the
            domain's orientation; without, the pixels inside each box (:func:`crop_box`).
        undo : list, optional
            Filled with what the write replaced, for :meth:`revert`.

        Returns
        -------
        list of dict
            The rows written (new or updated), in the order of ``boxes``.

        Raises
        ------
        ValueError
            For labels outside 0..5, mismatched lengths, or boxes outside the image.
        """
        mat = get_material(material)
        b = np.asarray(boxes, dtype=float).reshape(-1, 4)
        lab = np.asarray(labels, dtype=int).reshape(-1)
        n = len(b)
        if len(lab) != n:
            raise ValueError(f"got {n} boxes but {len(lab)} labels")
        if np.any((lab < 0) | (lab >= N_CLASSES)):
            raise ValueError(f"labels must be class ids 0..{N_CLASSES - 1}, got {sorted(set(lab.tolist()))}")
        conf = np.full(n, np.nan) if confidence_before is None else np.asarray(confidence_before, float).reshape(-1)
        before = np.full(n, -1) if label_before is None else np.asarray(label_before, int).reshape(-1)
        if len(conf) != n or len(before) != n:
            raise ValueError("confidence_before and label_before need one value per box")
        if pixel_size is not None and not (math.isfinite(pixel_size) and pixel_size > 0):
            raise ValueError(f"pixel_size must be a positive number of Å/px, got {pixel_size}")
        if frames is not None:
            fr = np.asarray(frames, dtype=float).reshape(-1, 2, 3)
            if len(fr) != n:
                raise ValueError(f"got {n} boxes but {len(fr)} frames")
            crops = [crop_frame(image, f) for f in fr]  # validates every cell before writing
        else:
            crops = [crop_box(image, bb) for bb in b]
        stamp = timestamp or datetime.now(timezone.utc).isoformat(timespec="seconds")
        rows = self.rows()
        written = []
        for k in range(n):
            row = self._match(rows, source, b[k])
            if row is None:
                row = {"crop": f"{self._crop_id(source, b[k])}.npy"}
                rows.append(row)
                if undo is not None:
                    undo.append((row["crop"], None, None))
            else:  # keep what the classifier said before the first correction
                if undo is not None:
                    undo.append((row["crop"], dict(row), self._read_crop(row["crop"])))
                conf[k], before[k] = row["confidence_before"], row["label_before"]
            row.update(
                label=int(lab[k]), class_name=mat.class_names[lab[k]], material=mat.name,
                pixel_size_A=float(pixel_size) if pixel_size else float("nan"), source=str(source),
                x_min=float(b[k, 0]), y_min=float(b[k, 1]), x_max=float(b[k, 2]), y_max=float(b[k, 3]),
                confidence_before=float(conf[k]), label_before=int(before[k]), timestamp=stamp,
                normalized=int(bool(normalized)),
            )
            buf = _io.BytesIO()
            np.save(buf, crops[k], allow_pickle=False)
            with atomic_write(self.path / "crops" / row["crop"]) as fh:
                fh.write(buf.getvalue())
            written.append(row)
        self._write_index(rows)
        return written

    def remove_matching(self, source: str, boxes: np.ndarray, undo: list | None = None) -> list[dict[str, Any]]:
        """Remove the rows (and crops) of cells of ``source`` at ``boxes`` (N, 4) px, matched
        like :meth:`add_many` does; returns the rows removed. ``undo`` is filled for
        :meth:`revert`."""
        rows = self.rows()
        removed = []
        for bb in np.asarray(boxes, dtype=float).reshape(-1, 4):
            row = self._match(rows, source, bb)
            if row is None:
                continue
            if undo is not None:
                undo.append((row["crop"], dict(row), self._read_crop(row["crop"])))
            rows.remove(row)
            removed.append(row)
        if removed:
            self._write_index(rows)
            for row in removed:
                (self.path / "crops" / row["crop"]).unlink(missing_ok=True)
        return removed

    def revert(self, undo: list) -> None:
        """Undo writes: put back the rows and crops that ``undo`` (filled by :meth:`add_many`
        or :meth:`remove_matching`) recorded, and remove the rows those calls added."""
        if not undo:
            return
        rows = self.rows()
        gone = []
        for name, old_row, old_crop in reversed(undo):
            rows = [r for r in rows if r["crop"] != name]
            if old_row is None:
                gone.append(name)
                continue
            rows.append(old_row)
            if old_crop is not None:
                buf = _io.BytesIO()
                np.save(buf, old_crop, allow_pickle=False)
                with atomic_write(self.path / "crops" / name) as fh:
                    fh.write(buf.getvalue())
        self._write_index(rows)
        for name in gone:
            if not any(r["crop"] == name for r in rows):
                (self.path / "crops" / name).unlink(missing_ok=True)

    def load(self) -> tuple[list[np.ndarray], np.ndarray, list[dict[str, Any]]]:
        """All crops, their labels and rows (see :func:`load_corrections`)."""
        return load_corrections(self.path)

    # ------------------------------------------------------------------ internals
    def _read_crop(self, name: str) -> np.ndarray | None:
        p = self.path / "crops" / name
        return np.load(p, allow_pickle=False) if p.exists() else None

    @staticmethod
    def _match(rows: list[dict[str, Any]], source: str, box: np.ndarray) -> dict[str, Any] | None:
        c = (box[:2] + box[2:]) / 2.0
        tol = 0.25 * min(box[2] - box[0], box[3] - box[1])
        for row in rows:
            if row.get("source") != str(source):
                continue
            rc = np.array([(row["x_min"] + row["x_max"]) / 2.0, (row["y_min"] + row["y_max"]) / 2.0])
            if np.hypot(*(rc - c)) <= tol:
                return row
        return None

    @staticmethod
    def _crop_id(source: str, box: np.ndarray) -> str:
        c = (box[:2] + box[2:]) / 2.0
        key = f"{source}|{c[0]:.2f}|{c[1]:.2f}"
        return hashlib.sha1(key.encode()).hexdigest()[:16]

    def _write_index(self, rows: list[dict[str, Any]]) -> None:
        with atomic_write(self.index_path, "w") as fh:
            w = csv.writer(fh, lineterminator="\n")
            w.writerow(INDEX_COLUMNS)
            for row in rows:
                w.writerow([_fmt(row[c]) for c in INDEX_COLUMNS])


def load_corrections(path: str | Path) -> tuple[list[np.ndarray], np.ndarray, list[dict[str, Any]]]:
    """Read a corrections database -> ``(crops, labels, rows)``.

    ``crops`` are 2-D float32 arrays at the source image's sampling (their pixel size is
    in ``rows[k]["pixel_size_A"]``); ``labels`` an int array of class ids.

    Raises
    ------
    FileNotFoundError
        If ``path`` has no ``index.csv`` or a listed crop is missing (names the file).
    ValueError
        If the index or a crop is malformed.
    """
    p = Path(path)
    if not (p / "index.csv").exists():
        raise FileNotFoundError(f"no corrections database at {p} (expected {p / 'index.csv'})")
    rows = read_index(p)
    crops = []
    for row in rows:
        f = p / "crops" / row["crop"]
        if not f.exists():
            raise FileNotFoundError(f"{p / 'index.csv'} lists {row['crop']}, which is missing from {p / 'crops'}")
        arr = np.load(f, allow_pickle=False)
        if arr.ndim != 2:
            raise ValueError(f"{f}: expected a 2-D crop, got shape {arr.shape}")
        crops.append(arr.astype(np.float32))
    labels = np.array([r["label"] for r in rows], dtype=int)
    return crops, labels, rows
