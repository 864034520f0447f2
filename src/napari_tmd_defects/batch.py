"""Analyse many image files: in this process, in worker processes, or on a dask cluster.

A file that cannot be read or holds nothing to analyse (no lattice, no cells) is reported
as failed, with the reason; the others finish. Every output file is written
atomically (temporary file, then rename), so an interrupted run leaves no half-written
results. A ``batch_summary.csv`` lists every input with its status and counts.
"""

from __future__ import annotations

import glob
import os
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

import numpy as np

from .io import IMAGE_SUFFIXES, atomic_write
from .materials import get_material

__all__ = ["BatchOptions", "FileOutcome", "expand_inputs", "run_batch"]


@dataclass(frozen=True)
class BatchOptions:
    """Settings shared by every file of a batch (see :func:`pipeline.analyze`)."""

    out_dir: str
    pixel_size: float | None = None
    #: keep the given / file pixel size when it disagrees with the lattice (else the lattice's is used)
    trust_pixel_size: bool = False
    material: str = "MoTe2"
    alpha: float = 0.65
    beta: float = 0.5
    device: str = "auto"
    classify: bool = True
    detector: str | None = None
    classifier: str | None = None
    #: where CNN-1 looks (:data:`.pipeline.HEXAGON_COVERAGES`): "frame" or "sample"
    hexagons: str = "frame"
    #: the site-state head an alloy's metal sites are read with ("default" or a weights file), or
    #: None: the column heights
    site_head: str | None = "default"
    overlay: bool = True
    #: overlay colours (:data:`.visualization.PALETTES`: "paper" or "colorblind") and cell style
    palette: str = "paper"
    cell_style: str = "outline"
    #: a file holding a series of frames: None (refused) or "sum" (aligned and averaged,
    #: :func:`.stacks.align_and_sum`)
    stack: str | None = None


@dataclass
class FileOutcome:
    """What happened to one input file: ``ok`` (cells found and written) or failed
    (unreadable, or nothing to analyse: no lattice, no cells), ``message`` says why."""

    path: str
    stem: str
    ok: bool
    message: str = ""
    n_cells: int = 0
    pixel_size: float | None = None
    pixel_size_source: str = ""
    area_nm2: float = 0.0
    counts: dict[str, int] = field(default_factory=dict)
    concentration_cm2: dict[str, float] = field(default_factory=dict)
    #: one-sigma uncertainty of every count (:meth:`AnalysisResult.counts_uncertainty`)
    counts_uncertainty: dict[str, float] = field(default_factory=dict)
    #: the counts with the unread chalcogen columns as the classifier calls them
    #: (:meth:`AnalysisResult.counts_unread_as_classified`); empty without probabilities
    counts_unread_as_classified: dict[str, int] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    @property
    def status(self) -> str:
        """``"ok"`` or ``"failed"`` (as in ``batch_summary.csv``)."""
        return "ok" if self.ok else "failed"


def expand_inputs(items: Iterable[str | Path]) -> list[Path]:
    """Files named directly, image files inside folders, and glob patterns, in order."""
    out: list[Path] = []
    for item in items:
        p = Path(item)
        if p.is_dir():
            out += sorted(f for f in p.iterdir() if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES)
        elif any(ch in str(item) for ch in "*?["):
            out += sorted(Path(f) for f in glob.glob(str(item), recursive=True) if Path(f).is_file())
        else:
            out.append(p)
    seen, unique = set(), []
    for p in out:
        if p.resolve() not in seen:
            seen.add(p.resolve())
            unique.append(p)
    return unique


def _stems(paths: list[Path]) -> list[str]:
    """Output name stems, made unique when two inputs share a file name."""
    count: dict[str, int] = {}
    stems = []
    for p in paths:
        s = p.stem
        k = count.get(s, 0)
        count[s] = k + 1
        stems.append(s if k == 0 else f"{s}_{k + 1}")
    return stems


def _models(opts: BatchOptions):
    """The detector and classifier for these options, loaded once per process (the
    pipeline's loaded-network cache, :func:`~.pipeline._resolve_model`)."""
    from .pipeline import _resolve_model

    det = _resolve_model(opts.detector, "detector", opts.device)
    clf = _resolve_model(opts.classifier, "classifier", opts.device) if opts.classify else None
    return det, clf


def _read(path: Path, opts: BatchOptions) -> tuple[np.ndarray, dict]:
    """A file's image and metadata (:func:`.io.read_image`); with ``opts.stack == "sum"``
    a series of frames aligned and averaged, a warning saying so."""
    from .io import read_image, read_stack

    if opts.stack is None:
        return read_image(path)
    if opts.stack != "sum":
        raise ValueError(f"stack must be None or 'sum', got {opts.stack!r}")
    stack, meta = read_stack(path)
    if len(stack) == 1:
        return stack[0], meta
    from .stacks import align_and_sum, series_note

    image, shifts = align_and_sum(stack)
    meta.setdefault("warnings", []).append(series_note(shifts, image))
    return image, meta


def analyze_file(path: str | Path, stem: str, opts: BatchOptions) -> FileOutcome:
    """Read, analyse and save one file; never raises for a bad input file."""
    from .pipeline import analyze

    path = Path(path)
    try:
        image, meta = _read(path, opts)
        ps = opts.pixel_size if opts.pixel_size is not None else meta.get("pixel_size_A")
        det, clf = _models(opts)
        res = analyze(
            meta.get("rgb", image), pixel_size=ps, material=opts.material, alpha=opts.alpha, beta=opts.beta,
            detector=det, classifier=clf, classify=opts.classify, hexagons=opts.hexagons, site_head=opts.site_head,
            pixel_size_source="given" if opts.pixel_size is not None else "metadata",
            trust_pixel_size=opts.trust_pixel_size,
        )
        res.warnings[:0] = meta.get("warnings", [])  # the file's: which of its images was read
        if res.n_cells == 0:
            # nothing to count: a failure, not an empty success (no files are written)
            why = "; ".join(res.warnings) or "no unit cells found"
            ps_out = res.pixel_size if res.pixel_size == res.pixel_size else None
            return FileOutcome(path=str(path), stem=stem, ok=False, message=f"nothing to analyse: {why}",
                               pixel_size=ps_out, pixel_size_source=res.pixel_size_source,
                               warnings=list(res.warnings))
        res.save(opts.out_dir, image=None, stem=stem)
        if opts.overlay:
            from .visualization import save_result_overlay

            save_result_overlay(Path(opts.out_dir) / f"{stem}_overlay.png", res, image, name=path.name,
                                palette=opts.palette, cell_style=opts.cell_style)
        return FileOutcome(
            path=str(path), stem=stem, ok=True, n_cells=res.n_cells, pixel_size=res.pixel_size,
            pixel_size_source=res.pixel_size_source, area_nm2=res.area_nm2, counts=res.counts(),
            concentration_cm2=res.concentrations_cm2(), counts_uncertainty=res.counts_uncertainty(),
            counts_unread_as_classified=res.counts_unread_as_classified() or {}, warnings=list(res.warnings),
        )
    except (ValueError, OSError, RuntimeError) as exc:
        return FileOutcome(path=str(path), stem=stem, ok=False, message=f"{type(exc).__name__}: {exc}")


def _write_summary(out_dir: Path, outcomes: list[FileOutcome], material: str) -> Path:
    names = get_material(material).class_names
    path = out_dir / "batch_summary.csv"
    with atomic_write(path, "w") as fh:
        cols = ["file", "status", "n_cells", "pixel_size_A", "pixel_size_source", "area_nm2"]
        cols += [f"n_{n}" for n in names] + [f"conc_cm2_{n}" for n in names]
        cols += [f"sd_n_{n}" for n in names] + [f"n_{n}_unread_as_classified" for n in names] + ["message"]
        fh.write(",".join(cols) + "\n")
        for o in outcomes:
            row = [o.path, o.status, str(o.n_cells),
                   "" if o.pixel_size is None else f"{o.pixel_size:.5f}", o.pixel_size_source,
                   f"{o.area_nm2:.4f}"]
            row += [str(o.counts.get(n, 0)) for n in names]
            row += [f"{o.concentration_cm2.get(n, 0.0):.4g}" for n in names]
            row += [f"{o.counts_uncertainty[n]:.2f}" if n in o.counts_uncertainty else "" for n in names]
            row += [str(o.counts_unread_as_classified[n]) if n in o.counts_unread_as_classified else ""
                    for n in names]
            msg = o.message or "; ".join(o.warnings)
            row.append('"' + msg.replace('"', "'") + '"')
            fh.write(",".join(row) + "\n")
    return path


def one_thread() -> None:
    """Worker-process start: torch, and with it the array stages (:mod:`.parallel`), on one
    thread. A forked worker keeps its parent's torch thread count (``OMP_NUM_THREADS``
    set after torch started changes nothing there): two workers on two cores would run
    four threads each stage."""
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a dependency
        return
    torch.set_num_threads(1)


def run_batch(
    inputs: Iterable[str | Path],
    opts: BatchOptions,
    workers: int = 1,
    scheduler: str | None = None,
    progress: Callable[[int, int], None] | None = None,
    on_result: Callable[[FileOutcome], None] | None = None,
) -> list[FileOutcome]:
    """Analyse every input; returns one :class:`FileOutcome` per file (input order).

    Parameters
    ----------
    inputs : files, folders or glob patterns
    opts : BatchOptions
    workers : int
        Processes on this machine (1: this process).
    scheduler : str, optional
        Address of a dask.distributed scheduler (``tcp://host:8786``); files are sent to
        its workers, which need this package installed.
    progress : callable(done, total), optional
    on_result : callable(FileOutcome), optional
        Called as each file finishes.
    """
    paths = expand_inputs(inputs)
    if not paths:
        raise ValueError("no image files found in the given inputs")
    get_material(opts.material)
    if opts.overlay:
        from .visualization import class_colors

        class_colors(opts.palette)  # a clear error before any work
        if opts.cell_style not in ("outline", "marker"):
            raise ValueError(f"cell_style must be 'outline' or 'marker', got {opts.cell_style!r}")
    out = Path(opts.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    stems = _stems(paths)
    results: list[FileOutcome | None] = [None] * len(paths)
    done = 0

    def finish(k: int, res: FileOutcome) -> None:
        nonlocal done
        results[k] = res
        done += 1
        if on_result:
            on_result(res)
        if progress:
            progress(done, len(paths))

    if scheduler:
        try:
            from dask.distributed import Client, as_completed as dask_completed
        except ImportError as exc:
            raise ValueError("--scheduler needs dask.distributed (pip install distributed)") from exc
        with Client(scheduler) as client:
            futs = {client.submit(analyze_file, str(p), s, opts, pure=False): k
                    for k, (p, s) in enumerate(zip(paths, stems))}
            for fut in dask_completed(futs):
                finish(futs[fut], fut.result())
    elif workers > 1:
        # one torch thread per process: the processes are the parallelism
        env_threads = os.environ.get("OMP_NUM_THREADS")
        os.environ["OMP_NUM_THREADS"] = "1"
        try:
            with ProcessPoolExecutor(max_workers=workers, initializer=one_thread) as ex:
                futs = {ex.submit(analyze_file, p, s, opts): k for k, (p, s) in enumerate(zip(paths, stems))}
                for fut in as_completed(futs):
                    finish(futs[fut], fut.result())
        finally:
            if env_threads is None:
                os.environ.pop("OMP_NUM_THREADS", None)
            else:
                os.environ["OMP_NUM_THREADS"] = env_threads
    else:
        for k, (p, s) in enumerate(zip(paths, stems)):
            finish(k, analyze_file(p, s, opts))
    final = [r for r in results if r is not None]
    _write_summary(out, final, opts.material)
    return final
