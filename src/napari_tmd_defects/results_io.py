"""Saving an analysis so that it reopens, and reopening it. Qt-free.

:func:`save_result` writes, for a name ``NAME`` (all in one folder):

* ``NAME_cells.csv``    the per-cell table (:meth:`~.analysis.Result.write_csv`, px);
* ``NAME_summary.json`` the summary (:meth:`~.analysis.Result.summary`) plus
  ``source_image``, the image's path relative to the folder (and ``source_image_absolute``);
* ``NAME_result.npz``   the whole :class:`~.analysis.Result` (cells, classes, corrections
  and the classes before them, hexagons, sites, domains, boundaries, site states, vacuum),
  as arrays plus one JSON tree, no pickles;
* ``NAME.tmd.json``     the project file: the image and the three files above;
* ``NAME_image.tif``    the image, only when it has no file of its own (a simulated frame).

:func:`load_result` opens the project file, the summary or the cell table (the other
files are found beside it) and finds the image: the recorded path (relative to the file,
then absolute), ``NAME_image.tif``, or an image ``NAME.<ext>`` beside it of the result's
shape. Without ``NAME_result.npz`` (files of :meth:`~.analysis.Result.save`, the CLI and
the Statistics export) the result is rebuilt from the table and the summary: cells,
classes, corrections, confidences and statistics, without hexagons, sites, boundaries
and vacuum; :attr:`OpenedResult.notes` says what is missing.
"""

from __future__ import annotations

import csv
import dataclasses
import importlib
import io
import json
import os
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ._version import __version__
from .io import IMAGE_SUFFIXES, ImageReadError, atomic_write, read_image, write_tiff

__all__ = [
    "CELLS_SUFFIX",
    "PROJECT_SUFFIX",
    "RESULT_FILE_PATTERNS",
    "OpenedResult",
    "ResultReadError",
    "is_result_file",
    "load_result",
    "result_from_npz",
    "result_stem",
    "result_to_npz",
    "save_result",
]

PROJECT_SUFFIX = ".tmd.json"
CELLS_SUFFIX = "_cells.csv"
SUMMARY_SUFFIX = "_summary.json"
STATE_SUFFIX = "_result.npz"
IMAGE_SUFFIX = "_image.tif"
#: File-name patterns :func:`load_result` opens.
RESULT_FILE_PATTERNS = (f"*{PROJECT_SUFFIX}", f"*{SUMMARY_SUFFIX}", f"*{CELLS_SUFFIX}")
PROJECT_FORMAT = "napari-tmd-defects project"
STATE_FORMAT = "napari-tmd-defects result"
FORMAT_VERSION = 1
#: Columns every cell table of this package has (the first ones, in this order).
CELL_COLUMNS = ("x_min", "y_min", "x_max", "y_max", "defect", "confidence",
                "x_site_x", "x_site_y", "m_site_x", "m_site_y", "class_id", "flagged", "corrected")
_MARK = "__tmd__"
_PACKAGE = __name__.rpartition(".")[0]


class ResultReadError(ValueError):
    """Files that are not (or no longer) a readable napari-tmd-defects result; the
    message names the file and says why."""


@dataclass
class OpenedResult:
    """A reopened analysis: the result, its image (None when not found) and notes for the user."""

    result: Any
    image: np.ndarray | None = None
    image_meta: dict[str, Any] = field(default_factory=dict)
    #: name of the image layer the analysis was made on (names the result layers)
    image_name: str = ""
    files: dict[str, Path] = field(default_factory=dict)
    #: what could not be restored (the image, the hexagons, ...), in plain words
    notes: list[str] = field(default_factory=list)
    #: True when the whole result was restored (``NAME_result.npz``)
    complete: bool = False


# --------------------------------------------------------------------------- names
def result_stem(path: str | Path) -> tuple[Path, str]:
    """``(folder, NAME)`` of any of the files of a saved result (or a name without suffix)."""
    p = Path(path)
    name = p.name
    for suffix in (PROJECT_SUFFIX, CELLS_SUFFIX, SUMMARY_SUFFIX, STATE_SUFFIX, IMAGE_SUFFIX):
        if name.lower().endswith(suffix):
            return p.parent, name[: -len(suffix)] or "analysis"
    if name.lower().endswith((".csv", ".json")):
        name = name.rsplit(".", 1)[0]
    return p.parent, name or "analysis"


def _files(folder: Path, stem: str) -> dict[str, Path]:
    return {"project": folder / f"{stem}{PROJECT_SUFFIX}", "cells": folder / f"{stem}{CELLS_SUFFIX}",
            "summary": folder / f"{stem}{SUMMARY_SUFFIX}", "result": folder / f"{stem}{STATE_SUFFIX}",
            "image": folder / f"{stem}{IMAGE_SUFFIX}"}


# --------------------------------------------------------------------------- the whole Result as npz
def _encode(v: Any, arrays: dict[str, np.ndarray]) -> Any:
    """JSON-ready tree of ``v``; arrays go to ``arrays`` (referenced by name)."""
    if isinstance(v, np.ndarray):
        name = f"a{len(arrays)}"
        if v.dtype.kind == "O":
            arrays[name] = v.astype(str)
            return {_MARK: "array", "name": name, "object": True}
        arrays[name] = v
        return {_MARK: "array", "name": name}
    if dataclasses.is_dataclass(v) and not isinstance(v, type):
        cls = type(v)
        return {_MARK: "dataclass", "class": f"{cls.__module__}:{cls.__qualname__}",
                "fields": {f.name: _encode(getattr(v, f.name), arrays) for f in dataclasses.fields(v)}}
    if isinstance(v, dict):
        if all(isinstance(k, str) for k in v) and _MARK not in v:
            return {k: _encode(x, arrays) for k, x in v.items()}
        return {_MARK: "dict", "items": [[_encode(k, arrays), _encode(x, arrays)] for k, x in v.items()]}
    if isinstance(v, tuple):
        return {_MARK: "tuple", "items": [_encode(x, arrays) for x in v]}
    if isinstance(v, (list, set, frozenset)):
        return [_encode(x, arrays) for x in v]
    if isinstance(v, np.generic):
        return v.item()
    if v is None or isinstance(v, (str, bool, int, float)):
        return v
    return str(v)  # paths and anything else: kept as text


def _dataclass_type(spec: str):
    module, _, qualname = spec.partition(":")
    if not (module == _PACKAGE or module.startswith(_PACKAGE + ".")):
        raise ResultReadError(f"refusing to build {spec!r}: not a class of {_PACKAGE}")
    obj: Any = importlib.import_module(module)
    for part in qualname.split("."):
        obj = getattr(obj, part, None)
    if not (isinstance(obj, type) and dataclasses.is_dataclass(obj)):
        raise ResultReadError(f"{spec!r} is not a data class of this version of {_PACKAGE}")
    return obj


def _decode(t: Any, arrays) -> Any:
    if isinstance(t, list):
        return [_decode(x, arrays) for x in t]
    if not isinstance(t, dict):
        return t
    kind = t.get(_MARK)
    if kind is None:
        return {k: _decode(x, arrays) for k, x in t.items()}
    if kind == "array":
        a = np.asarray(arrays[t["name"]])
        return a.astype(object) if t.get("object") else a
    if kind == "tuple":
        return tuple(_decode(x, arrays) for x in t["items"])
    if kind == "dict":
        return {_decode(k, arrays): _decode(x, arrays) for k, x in t["items"]}
    if kind == "dataclass":
        cls = _dataclass_type(t["class"])
        vals = {k: _decode(x, arrays) for k, x in t["fields"].items()}
        known = {f.name: f for f in dataclasses.fields(cls)}
        init = {k: v for k, v in vals.items() if k in known and known[k].init}
        try:
            obj = cls(**init)
        except TypeError as exc:
            raise ResultReadError(f"cannot rebuild {cls.__name__}: {exc}") from exc
        for k, v in vals.items():
            if k in known and not known[k].init:
                setattr(obj, k, v)
        return obj
    raise ResultReadError(f"unknown entry {kind!r}")


def result_to_npz(result, path: str | Path) -> Path:
    """Write every field of ``result`` (and of its site model and site states) to an npz file."""
    arrays: dict[str, np.ndarray] = {}
    tree = {"format": STATE_FORMAT, "version": FORMAT_VERSION, "software": f"napari-tmd-defects {__version__}",
            "result": _encode(result, arrays)}
    arrays["__tree__"] = np.array(json.dumps(tree))
    with atomic_write(path) as fh:
        np.savez_compressed(fh, **arrays)
    return Path(path)


def result_from_npz(path: str | Path):
    """The :class:`~.analysis.Result` written by :func:`result_to_npz`.

    Raises
    ------
    ResultReadError
        If the file is not such a file or cannot be read.
    """
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
        tree = json.loads(str(arrays.pop("__tree__")))
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:
        raise ResultReadError(f"{path}: not a saved napari-tmd-defects result ({exc})") from exc
    if tree.get("format") != STATE_FORMAT:
        raise ResultReadError(f"{path}: not a saved napari-tmd-defects result")
    if int(tree.get("version", 0)) > FORMAT_VERSION:
        raise ResultReadError(f"{path}: written by a newer napari-tmd-defects ({tree.get('software')}); update to open it")
    try:
        res = _decode(tree["result"], arrays)
    except ResultReadError as exc:
        raise ResultReadError(f"{path}: {exc}") from exc
    except (KeyError, ValueError, TypeError, AttributeError) as exc:
        raise ResultReadError(f"{path}: damaged ({type(exc).__name__}: {exc})") from exc
    from .analysis import Result

    if not isinstance(res, Result):
        raise ResultReadError(f"{path}: holds no analysis result")
    return res


# --------------------------------------------------------------------------- save
def _relative(target: Path, folder: Path) -> str:
    try:
        return Path(os.path.relpath(target.resolve(), folder.resolve())).as_posix()
    except ValueError:  # another drive
        return str(target.resolve())


def save_result(result, path: str | Path, image: np.ndarray | None = None,
                image_source: str | Path | None = None, image_name: str = "") -> dict[str, Path]:
    """Write a result so that :func:`load_result` reopens it (files: see the module).

    ``path`` is any of the file names (``NAME_cells.csv``, ``NAME.tmd.json``, ``NAME.csv``
    or just ``NAME``). ``image_source`` is the image's file; when there is none (or not
    one of :data:`~.io.IMAGE_SUFFIXES`) and ``image`` is given, the image is written as
    ``NAME_image.tif``. Returns the paths by kind, the cell table first.
    """
    folder, stem = result_stem(path)
    files = _files(folder, stem)
    out: dict[str, Path] = {"cells": result.write_csv(files["cells"])}
    src = Path(image_source) if image_source else None
    if src is None or not src.is_file() or (image is not None and src.suffix.lower() not in IMAGE_SUFFIXES):
        src = None  # no file, or one that load_result could not read: keep the pixels
        if image is not None:
            px = result.pixel_size if result.pixel_size == result.pixel_size else None
            src = out["image"] = write_tiff(files["image"], np.asarray(image), px)
    image_ref: dict[str, str | None] = {"source_image": None, "source_image_absolute": None}
    if src is not None:
        image_ref = {"source_image": _relative(src, folder), "source_image_absolute": str(src.resolve())}
    summary = {**result.summary(), **image_ref}
    with atomic_write(files["summary"], "w") as fh:
        json.dump(summary, fh, indent=2)
    out["summary"] = files["summary"]
    out["result"] = result_to_npz(result, files["result"])
    project = {
        "format": PROJECT_FORMAT, "version": FORMAT_VERSION, "software": f"napari-tmd-defects {__version__}",
        "image": image_ref["source_image"], "image_absolute": image_ref["source_image_absolute"],
        "image_name": image_name or stem,
        "cells": files["cells"].name, "summary": files["summary"].name, "result": files["result"].name,
        "material": result.material, "pixel_size_A": summary["pixel_size_A"], "n_cells": result.n_cells,
    }
    with atomic_write(files["project"], "w") as fh:
        json.dump(project, fh, indent=2)
    out["project"] = files["project"]
    return out


# --------------------------------------------------------------------------- recognise
def _read_json(path: Path) -> dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as fh:
            d = json.load(fh)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ResultReadError(f"{path}: cannot read ({exc})") from exc
    if not isinstance(d, dict):
        raise ResultReadError(f"{path}: not a napari-tmd-defects file (no JSON object)")
    return d


def _csv_header(path: Path) -> list[str]:
    try:
        with open(path, encoding="utf-8", newline="") as fh:
            return next(csv.reader(io.StringIO(fh.readline())), [])
    except (OSError, UnicodeDecodeError):
        return []


def _is_ours_summary(d: dict[str, Any]) -> bool:
    return str(d.get("software", "")).startswith("napari-tmd-defects") and "material" in d


def is_result_file(path: str | Path) -> bool:
    """True for a project file, summary or cell table of this package (reads the start of the file)."""
    p = Path(path)
    name = p.name.lower()
    if not name.endswith((CELLS_SUFFIX, PROJECT_SUFFIX, SUMMARY_SUFFIX)) or not p.is_file():
        return False
    if name.endswith(CELLS_SUFFIX):
        return tuple(_csv_header(p)[: len(CELL_COLUMNS)]) == CELL_COLUMNS
    if name.endswith((PROJECT_SUFFIX, SUMMARY_SUFFIX)):
        try:
            if p.stat().st_size > 50_000_000:
                return False
            d = _read_json(p)
        except (OSError, ResultReadError):
            return False
        return d.get("format") == PROJECT_FORMAT if name.endswith(PROJECT_SUFFIX) else _is_ours_summary(d)
    return False


# --------------------------------------------------------------------------- rebuild from table + summary
def _float(v: Any, default: float = float("nan")) -> float:
    try:
        return float(v)
    except (TypeError, ValueError):
        return default


def _read_cells(path: Path, class_names) -> dict[str, np.ndarray]:
    """Columns of a cell table (numbers as arrays), checked."""
    try:
        with open(path, encoding="utf-8", newline="") as fh:
            rows = list(csv.reader(fh))
    except (OSError, UnicodeDecodeError) as exc:
        raise ResultReadError(f"{path}: cannot read ({exc})") from exc
    header = rows[0] if rows else []
    missing = [c for c in CELL_COLUMNS if c not in header]
    if missing:
        raise ResultReadError(
            f"{path}: not a napari-tmd-defects cell table (no column {', '.join(missing)}); "
            "it has " + (", ".join(header[:8]) + (" ..." if len(header) > 8 else "") if header else "no header"))
    body = [r for r in rows[1:] if r]
    bad = [k + 2 for k, r in enumerate(body) if len(r) != len(header)]
    if bad:
        raise ResultReadError(f"{path}: line {bad[0]} has {len(body[bad[0] - 2])} values, the header {len(header)}")
    cols = {name: [r[k] for r in body] for k, name in enumerate(header)}

    def num(name, dtype=float, default=0):
        if name not in cols:
            return np.full(len(body), default, dtype)
        try:
            return np.array([float(v) for v in cols[name]], float).astype(dtype)
        except ValueError as exc:
            raise ResultReadError(f"{path}: column {name!r} holds a value that is not a number ({exc})") from exc

    out = {c: num(c) for c in ("x_min", "y_min", "x_max", "y_max", "confidence", "x_site_x", "x_site_y",
                                "m_site_x", "m_site_y")}
    out["class_id"] = num("class_id", np.int64)
    for c in ("flagged", "corrected", "x_placed", "m_placed"):
        out[c] = num(c, np.int64).astype(bool)
    for c in ("support", "i", "j", "domain"):
        out[c] = num(c, np.int64)
    out["x_unresolved"] = np.array([v == "unresolved" for v in cols.get("x_state", [""] * len(body))], bool)
    p_cols = [f"p_{n}" for n in class_names]
    if all(c in cols for c in p_cols) and body:
        out["probabilities"] = np.stack([num(c) for c in p_cols], axis=1)
    if "machine_class_id" in cols:
        out["machine_labels"] = num("machine_class_id", np.int64)
    elif "machine_class" in cols:
        ids = {n: k for k, n in enumerate(class_names)} | {"boundary": -2}
        out["machine_labels"] = np.array([ids.get(v, -1) for v in cols["machine_class"]], np.int64)
    if "machine_confidence" in cols:
        out["machine_confidence"] = num("machine_confidence")
    out["n"] = len(body)
    return out


def _result_from_table(cells_path: Path, summary: dict[str, Any], summary_path: Path):
    from .analysis import Result
    from .materials import N_CLASSES, get_material

    try:
        names = get_material(summary["material"]).class_names
    except (KeyError, ValueError) as exc:
        raise ResultReadError(f"{summary_path}: unknown material ({exc})") from exc
    c = _read_cells(cells_path, names)
    n = c["n"]
    labels = c["class_id"]
    if n and (labels.max() >= N_CLASSES or labels.min() < -2):
        raise ResultReadError(f"{cells_path}: class_id must lie in -2..{N_CLASSES - 1}")

    def xy(a: str, b: str) -> np.ndarray:
        return np.stack([c[a], c[b]], axis=1) if n else np.zeros((0, 2))

    shape = tuple(int(v) for v in summary.get("image_shape") or ())
    if len(shape) != 2:
        raise ResultReadError(f"{summary_path}: no image_shape")
    # the classes before corrections: from the table when it has them, else unknown (-1)
    # for corrected cells
    extra = {"machine_labels": c.get("machine_labels", np.where(c["corrected"], -1, labels)),
             "machine_confidence": c.get("machine_confidence", np.where(c["corrected"], np.nan, c["confidence"]))}
    known = {f.name for f in dataclasses.fields(Result)}
    res = Result(
        material=str(summary["material"]), pixel_size=_float(summary.get("pixel_size_A")),
        pixel_size_source=str(summary.get("pixel_size_source", "")), image_shape=shape,
        alpha=_float(summary.get("alpha"), 0.65), beta=_float(summary.get("beta"), 0.5),
        hexagon_boxes=np.zeros((0, 4)), hexagon_scores=np.zeros(0),
        boxes=np.stack([c["x_min"], c["y_min"], c["x_max"], c["y_max"]], axis=1) if n else np.zeros((0, 4)),
        x_sites=xy("x_site_x", "x_site_y"), m_sites=xy("m_site_x", "m_site_y"),
        ij=np.stack([c["i"], c["j"]], axis=1) if n else np.zeros((0, 2), np.int64),
        support=c["support"], labels=labels, confidence=c["confidence"],
        probabilities=c.get("probabilities"), flagged=c["flagged"], corrected=c["corrected"],
        domain=c["domain"], placed=c["x_placed"].astype(np.int64) + 2 * c["m_placed"].astype(np.int64),
        x_unresolved=c["x_unresolved"],
        low_confidence=_float(summary.get("low_confidence_threshold"), 0.6),
        noise=dict(summary.get("noise_estimate") or {}),
        n_excluded_vacuum=int(summary.get("n_cells_excluded_in_vacuum") or 0),
        checks=dict(summary.get("checks") or {}), models=dict(summary.get("models") or {}),
        timings={k: _float(v) for k, v in (summary.get("timings_s") or {}).items()},
        warnings=[str(w) for w in summary.get("warnings") or []],
        **{k: v for k, v in extra.items() if k in known},
    )
    return res


# --------------------------------------------------------------------------- load
def _find_image(candidates: list[tuple[str, Path]], shape: tuple[int, ...], notes: list[str]):
    """The first candidate image that exists and has the result's shape."""
    tried = []
    for why, p in candidates:
        if p in (q for _, q in tried) or not p.is_file():
            continue
        tried.append((why, p))
        try:
            img, meta = read_image(p)
        except (ImageReadError, OSError) as exc:
            notes.append(f"the image {p} cannot be read ({exc})")
            continue
        if tuple(img.shape) != tuple(shape):
            notes.append(f"{p.name} is {img.shape[1]} × {img.shape[0]} px, the analysed image "
                         f"{shape[1]} × {shape[0]} px: not used")
            continue
        return img, meta
    return None, {}


def _image_candidates(ref: str | None, absolute: str | None, folder: Path, stem: str) -> list[tuple[str, Path]]:
    out = []
    if ref:
        r = Path(ref)
        out.append(("recorded", r if r.is_absolute() else folder / r))
    if absolute:
        out.append(("recorded", Path(absolute)))
    out.append(("beside", folder / f"{stem}{IMAGE_SUFFIX}"))
    out += [("beside", folder / f"{stem}{s}") for s in IMAGE_SUFFIXES]
    return out


def load_result(path: str | Path, load_image: bool = True) -> OpenedResult:
    """Reopen a saved analysis from its project file, summary or cell table.

    Raises
    ------
    ResultReadError
        If the file is not one of these files of this package, or files it needs are
        missing or damaged (the message names them).
    FileNotFoundError
        If ``path`` does not exist.
    """
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"no such file: {p}")
    folder, stem = result_stem(p)
    files = _files(folder, stem)
    name = p.name.lower()
    notes: list[str] = []
    project: dict[str, Any] = {}
    if name.endswith(PROJECT_SUFFIX):
        project = _read_json(p)
        if project.get("format") != PROJECT_FORMAT:
            raise ResultReadError(f"{p}: not a napari-tmd-defects project file (no format {PROJECT_FORMAT!r})")
        if not isinstance(project.get("version", 0), int) or project.get("version", 0) > FORMAT_VERSION:
            raise ResultReadError(f"{p}: written by a newer napari-tmd-defects ({project.get('software')})")
        for kind in ("cells", "summary", "result"):
            if project.get(kind):
                files[kind] = folder / str(project[kind])
    elif name.endswith(SUMMARY_SUFFIX):
        if not _is_ours_summary(_read_json(p)):
            raise ResultReadError(f"{p}: not a napari-tmd-defects summary (no 'software' and 'material' of this package)")
    elif name.endswith(CELLS_SUFFIX):
        header = _csv_header(p)
        if tuple(header[: len(CELL_COLUMNS)]) != CELL_COLUMNS:
            raise ResultReadError(
                f"{p}: not a napari-tmd-defects cell table: its columns are "
                f"{', '.join(header[:6]) or 'none'} ..., ours start with {', '.join(CELL_COLUMNS[:6])}")
    else:
        raise ResultReadError(f"{p}: not a napari-tmd-defects result file (expected a name ending in "
                              f"{PROJECT_SUFFIX}, {SUMMARY_SUFFIX} or {CELLS_SUFFIX})")
    if not project and files["project"].is_file():
        try:
            project = _read_json(files["project"])
        except ResultReadError:
            project = {}
    summary = _read_json(files["summary"]) if files["summary"].is_file() else {}

    res = None
    complete = False
    if files["result"].is_file():
        res = result_from_npz(files["result"])
        complete = True
        if files["cells"].is_file():
            with open(files["cells"], encoding="utf-8", errors="replace") as fh:
                rows = sum(1 for line in fh if line.strip()) - 1
            if rows != res.n_cells:
                notes.append(f"{files['cells'].name} has {rows} cells, the saved result {res.n_cells}: "
                             "the saved result is shown")
    else:
        if not summary:
            raise ResultReadError(f"{p}: the summary {files['summary'].name} (material, pixel size, image "
                                  "size) is not beside it")
        if not files["cells"].is_file():
            raise ResultReadError(f"{p}: the cell table {files['cells'].name} is not beside it")
        res = _result_from_table(files["cells"], summary, files["summary"])
        notes.append(f"no {files['result'].name}: cells, classes, corrections and statistics come from the "
                     "table; hexagons, sites, boundaries and vacuum are not restored")

    out = OpenedResult(result=res, image_name=str(project.get("image_name") or stem),
                       files={k: v for k, v in files.items() if v.is_file()}, notes=notes, complete=complete)
    if load_image:
        ref = project.get("image") or summary.get("source_image") or summary.get("source")
        absolute = project.get("image_absolute") or summary.get("source_image_absolute")
        cands = _image_candidates(ref, absolute, folder, stem)
        out.image, out.image_meta = _find_image(cands, res.image_shape, notes)
        if out.image is None:
            rec = absolute or ref
            if not rec:
                where = "no image path is recorded and none was found beside it"
            elif any(c.is_file() for _, c in cands[:2]):
                where = f"the image {rec} could not be used"
            else:
                where = f"the image {rec} was not found"
            notes.insert(0, f"{where}: the result is shown without it")
    return out
