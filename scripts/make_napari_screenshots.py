"""Screenshots of the napari dock widgets in use -> docs/images/napari_*.png.

Run headless from the repository root::

    xvfb-run -a python scripts/make_napari_screenshots.py [--out docs/images]

Opens the built-in sample, runs the Defect analysis, then shows each dock widget in
use. When the shipped networks are not installed, the analysis uses ground-truth
stand-ins for them (the simulator's true hexagons and classes, with some cells made
uncertain), and every screenshot says so in the canvas.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
PLUGIN = "napari-tmd-defects"


def _models(layer):
    """(detector, classifier, label): the shipped models, else ground-truth stand-ins."""
    try:
        from napari_tmd_defects.classification import load_classifier
        from napari_tmd_defects.detection import load_detector

        return load_detector(), load_classifier(), "shipped networks"
    except (ImportError, OSError, RuntimeError) as exc:
        print(f"shipped models unavailable ({exc}); using ground-truth stand-ins", file=sys.stderr)
    from napari_tmd_defects.simulation import GroundTruth

    sys.path.insert(0, str(ROOT / "tests"))
    from conftest import TruthClassifier, TruthDetector

    class UncertainTruthClassifier(TruthClassifier):
        """True classes; a fixed random tenth of the cells made uncertain."""

        def predict(self, image, boxes, pixel_size, material="MoTe2", progress=None, cancel=None):
            p = super().predict(image, boxes, pixel_size, material, progress, cancel)
            rng = np.random.default_rng(0)
            for k in rng.choice(len(p), size=max(1, len(p) // 10), replace=False):
                top = int(np.argmax(p[k]))
                other = int((top + 1 + rng.integers(5)) % 6)
                c = rng.uniform(0.45, 0.6)
                p[k] = 0.01
                p[k, top], p[k, other] = c, 0.96 - c
            return p / p.sum(axis=1, keepdims=True)

    truth = GroundTruth.from_dict(layer.metadata["ground_truth"])
    return TruthDetector(truth), UncertainTruthClassifier(truth), "ground-truth stand-ins for the networks"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(ROOT / "docs" / "images"))
    args = ap.parse_args(argv)
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.gettempdir()) / "napari-tmd-demo"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir()
    os.chdir(work)  # corrections and exports of this run go to ./corrections, ./results

    import napari
    import napari._qt.qt_main_window as qt_main_window
    from qtpy.QtWidgets import QApplication

    qt_main_window.SHOW_QT_WARNING = False  # no "PyQt5 is deprecated" toast over the canvas (under PyQt5)
    viewer = napari.Viewer(title="napari-tmd-defects")
    viewer.window._qt_window.resize(1366, 768)  # a laptop screen
    image = viewer.open_sample(PLUGIN, "mote2_defects")[0]
    detector, classifier, label = _models(image)
    viewer.text_overlay.visible = True
    viewer.text_overlay.text = f"models: {label}"
    viewer.text_overlay.font_size = 11
    viewer.text_overlay.position = "top_left"
    viewer.scale_bar.visible = True

    def shot(name: str, reset: bool = True) -> None:
        for _ in range(5):
            QApplication.processEvents()
        if reset:
            viewer.reset_view()
            QApplication.processEvents()
        img = viewer.screenshot(canvas_only=False, flash=False)
        from PIL import Image

        # a 256-colour palette halves the file size; the class colours stay exact
        pic = Image.fromarray(img[..., :3]).quantize(256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
        pic.save(out / name, optimize=True)
        print("wrote", out / name)

    docks = {}

    def open_dock(title: str):
        dock, widget = viewer.window.add_plugin_dock_widget(PLUGIN, title)
        docks[title] = dock
        return widget

    def close_docks(*keep: str) -> None:
        for title in list(docks):
            if title not in keep:
                viewer.window.remove_dock_widget(docks.pop(title))

    analysis = open_dock("Defect analysis")
    analysis.detector, analysis.classifier = detector, classifier
    res = analysis.run()
    stats = open_dock("Statistics")
    stats.export_folder = "results"
    shot("napari_analysis.png")

    close_docks("Defect analysis", "Statistics")
    correction = open_dock("Correction")
    correction.database = "corrections"
    close_docks("Correction", "Statistics")
    from napari_tmd_defects._widgets import _layers, _selection

    k = correction.step_low_confidence(+1)
    if k is None:  # the networks are sure of every cell: show the least confident one
        k = int(np.argmin(res.confidence))
        _selection.select_cells(viewer, res, [k], center=True)
    viewer.camera.zoom *= 2.5
    correction.set_class(int(res.labels[k]) if res.labels[k] != 1 else 2)
    correction.step_low_confidence(+1)
    stats.refresh()
    shot("napari_correction.png", reset=False)

    close_docks()
    tuning = open_dock("α/β tuning")
    hexagons = [lay for lay in viewer.layers if lay.name.endswith("[hexagons]")][0]
    hexagons.visible = True
    tuning.set_alpha_beta(0.8, 0.62)
    viewer.reset_view()
    viewer.camera.zoom *= 2.2
    shot("napari_tuning.png", reset=False)
    tuning.set_alpha_beta(0.65, 0.5)
    hexagons.visible = False

    close_docks()
    preview = open_dock("Noise preview")
    preview.simulate()
    defect = int(np.flatnonzero((res.labels == 1) & ~res.flagged)[0])
    _selection.select_cells(viewer, _layers.current_result(viewer), [defect])
    preview.compare_selected()
    shot("napari_preview.png")
    viewer.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
