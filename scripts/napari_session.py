"""A scripted napari session on one frame, as a microscopist would drive it.

Run headless from the repository root (a 1366×768 window)::

    xvfb-run -a python scripts/napari_session.py FRAME [--material WSe2] [--pixel-size 0.09]
        [--out session_output]

Opens the frame with the plugin's reader, runs the Defect analysis with the shipped
networks, corrects three cells — one by a class key, one by deleting its point with
napari's Delete key, one by adding a point on a column no cell covers — undoes the last
correction with Ctrl+Z, exports every layer to a project file, closes the viewer, reopens
the project in a new viewer and checks that the cells, classes and corrections came back
and that the layers carry a scale bar in Å. Writes ``session.json`` (what was done and
checked) and a screenshot of every step to ``--out``; exits 1 if a check failed.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

PLUGIN = "napari-tmd-defects"
SCREEN = (1366, 768)


def _wait(app, until, timeout: float = 600.0) -> None:
    t0 = time.monotonic()
    while not until():
        app.processEvents()
        if time.monotonic() - t0 > timeout:
            raise TimeoutError("the analysis did not finish in time")
        time.sleep(0.02)


def _key(viewer, key, modifier=None) -> None:
    from qtpy.QtCore import Qt
    from qtpy.QtTest import QTest

    canvas = viewer.window._qt_viewer.canvas.native
    QTest.keyClick(canvas, key, modifier if modifier is not None else Qt.NoModifier)


def _shot(viewer, out: Path, name: str) -> str:
    """Screenshot of the window as the user sees it: pending layout events first (a label
    that just got a longer text is laid out by the event loop, not at once)."""
    from qtpy.QtWidgets import QApplication

    for _ in range(20):
        QApplication.instance().processEvents()
    path = out / f"{name}.png"
    viewer.screenshot(path=str(path), canvas_only=False)
    return path.name


def _missed_column(res, C) -> tuple[float, float] | None:
    """(row, col) px of a cell centre on an X column no cell covers, where a cell fits."""
    from napari_tmd_defects.sites import ROLE_X, canonical_cell_box

    model = res.sites
    if model is None:
        return None
    s = model.sites
    used = np.zeros(len(s.xy), bool)
    used[np.asarray(res.sites.cells.x)[np.asarray(res.sites.cells.x) >= 0]] = True
    box = canonical_cell_box(res.alpha, res.beta)
    centre = np.array([(box[0] + box[2]) / 2.0, (box[1] + box[3]) / 2.0])
    origins = res.frames[:, :, 2]
    for x in np.flatnonzero((s.role == ROLE_X) & ~used):
        ref = int(np.argmin(np.hypot(*(origins - s.xy[x]).T)))
        col, row = res.frames[ref, :, :2] @ centre + s.xy[x]
        try:
            C.place_cell(res, float(row), float(col))
        except ValueError:
            continue
        return float(row), float(col)
    return None


def run_session(frame: Path, out: Path, material: str | None = None, pixel_size: float | None = None) -> dict:
    """Drive the session; returns the record written to ``session.json``."""
    import napari
    from qtpy.QtCore import Qt
    from qtpy.QtWidgets import QApplication

    from napari_tmd_defects._widgets import _correction as C
    from napari_tmd_defects._widgets import _layers as L
    from napari_tmd_defects._widgets import _selection as S

    out.mkdir(parents=True, exist_ok=True)
    rec: dict = {"frame": frame.name, "screen": list(SCREEN), "steps": [], "checks": {}}
    viewer = napari.Viewer()
    viewer.window._qt_window.resize(*SCREEN)
    app = QApplication.instance()
    viewer.open(str(frame), plugin=PLUGIN)
    _, tools = viewer.window.add_plugin_dock_widget(PLUGIN, "All tools (tabs)")
    analysis = L.unwrap(tools).analysis
    analysis.ask = lambda title, text, options: rec["steps"].append(f"asked: {text}") or next(iter(options))
    if material:
        analysis._material.value = material  # the material list (binaries)
    if pixel_size:
        analysis.set_pixel_size(pixel_size)
    t0 = time.perf_counter()
    analysis.start()
    _wait(app, lambda: not analysis.running)
    res = analysis.result
    if res is None or res.n_cells == 0:
        raise RuntimeError(f"the analysis found no cells: {analysis.status}")
    rec["analysis"] = {"seconds": round(time.perf_counter() - t0, 1), "cells": int(res.n_cells),
                       "material": res.material, "pixel_size": res.pixel_size,
                       "pixel_size_source": res.pixel_size_source, "counts": res.counts()}
    rec["steps"].append(_shot(viewer, out, "1_analysed"))

    # 1. a class key on the least sure defect cell (to Perfect), or a Perfect cell (to V_X1)
    order = np.argsort(res.confidence)
    k = int(next((i for i in order if res.labels[i] > 0), next(i for i in order if res.labels[i] == 0)))
    new_label = 0 if res.labels[k] > 0 else 1
    S.select_cells(viewer, res, [k])
    _key(viewer, getattr(Qt, f"Key_{new_label}"))
    rec["steps"].append(f"class key {new_label} on cell {k}: now {res.class_names[res.labels[k]]}")
    # 2. napari's Delete key on another uncertain cell's point
    j = int(next(i for i in order if i != k))
    xy_deleted = L.cell_centres(res)[j].copy()
    S.select_cells(viewer, res, [j])
    n = res.n_cells
    _key(viewer, Qt.Key_Delete)
    rec["steps"].append(f"Delete on cell {j}: {n} -> {res.n_cells} cells")
    # 3. a point on a column no cell covers (else where the deleted cell was)
    spot = _missed_column(res, C)
    rec["steps"].append("point added on a missed column" if spot else
                        "no missed column in this frame: point added where the deleted cell was")
    row, col = spot if spot else (float(xy_deleted[0]), float(xy_deleted[1]))
    pts = L.result_layers(viewer, res)["centres"]
    viewer.layers.selection.active = pts
    pts.mode = "add"
    n = res.n_cells
    pts.add([row, col])
    pts.mode = "pan_zoom"
    _wait(app, lambda: res.n_cells == n + 1, timeout=60)
    rec["steps"].append(f"added cell: {res.class_names[res.labels[-1]]} ({res.n_cells} cells)")
    rec["steps"].append(_shot(viewer, out, "2_corrected"))
    # undo the last correction (the added cell)
    _key(viewer, Qt.Key_Z, Qt.ControlModifier)
    rec["steps"].append(f"Ctrl+Z: {res.n_cells} cells")
    rec["checks"]["undo removed the added cell"] = res.n_cells == n

    before = {"cells": int(res.n_cells), "labels": res.labels.tolist(), "corrected": res.corrected.tolist(),
              "machine_labels": res.machine_labels.tolist()}
    project = out / f"{frame.stem}.tmd.json"
    viewer.layers.save(str(project))
    rec["steps"].append(f"exported {project.name}")
    viewer.close()
    app.processEvents()

    v2 = napari.Viewer()
    v2.window._qt_window.resize(*SCREEN)
    v2.open(str(project), plugin=None)  # the reader is chosen by the file (napari defaults to its own)
    app.processEvents()
    back = L.current_result(v2)
    image = L.image_layer_of(v2, back) if back is not None else None
    rec["steps"].append(_shot(v2, out, "3_reopened"))
    ok = back is not None
    rec["checks"]["result reopened"] = ok
    if ok:
        rec["checks"]["same cells"] = int(back.n_cells) == before["cells"]
        rec["checks"]["same classes"] = back.labels.tolist() == before["labels"]
        rec["checks"]["same corrections"] = (back.corrected.tolist() == before["corrected"]
                                            and back.machine_labels.tolist() == before["machine_labels"])
        rec["checks"]["corrections kept"] = int(back.corrected.sum()) >= 1
        rec["checks"]["image reopened"] = image is not None
        units = [str(u) for u in getattr(image, "units", ())] if image is not None else []
        rec["checks"]["scale bar in Å"] = bool(v2.scale_bar.visible) and any(u in ("angstrom", "Å") for u in units)
        rec["checks"]["image scale is the pixel size"] = (image is not None and
                                                         bool(np.allclose(image.scale[-2:], back.pixel_size)))
    v2.close()
    rec["passed"] = all(rec["checks"].values())
    (out / "session.json").write_text(json.dumps(rec, indent=1, default=str))
    return rec


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("frame", type=Path)
    ap.add_argument("--material", default=None)
    ap.add_argument("--pixel-size", type=float, default=None, help="Å/px (default: the file's or the lattice's)")
    ap.add_argument("--out", type=Path, default=Path("session_output"))
    args = ap.parse_args(argv)
    rec = run_session(args.frame, args.out, args.material, args.pixel_size)
    for name, ok in rec["checks"].items():
        print(f"{'ok  ' if ok else 'FAIL'} {name}")
    print(f"wrote {args.out / 'session.json'}")
    return 0 if rec["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
