"""Fixtures for the widget tests: a viewer with the sample image, ground-truth stand-ins
for the two networks (from tests/conftest.py) and a throw-away corrections folder."""

import numpy as np
import pytest

from napari_tmd_defects.simulation import GroundTruth

PLUGIN = "napari-tmd-defects"


@pytest.fixture(autouse=True)
def corrections_dir(tmp_path, monkeypatch):
    """Corrections of every test go to a temporary folder, never the user's."""
    from napari_tmd_defects._widgets import _correction

    folder = tmp_path / "corrections"
    monkeypatch.setenv(_correction.DATABASE_ENV, str(folder))
    monkeypatch.setitem(_correction._SETTINGS, "database", None)
    monkeypatch.setitem(_correction._SETTINGS, "save", True)
    return folder


@pytest.fixture
def viewer(make_napari_viewer):
    v = make_napari_viewer(show=True)
    v.open_sample(PLUGIN, "mote2_defects")
    return v


@pytest.fixture
def truth_models(viewer):
    """(detector, classifier) returning the sample's true hexagons and classes; a tenth
    of the cells get a lower confidence (0.55) so that there is something to review."""
    from conftest import TruthClassifier, TruthDetector

    class ReviewTruthClassifier(TruthClassifier):
        def predict(self, image, boxes, pixel_size, material="MoTe2", progress=None, cancel=None, frames=None,
                    box=None):
            p = super().predict(image, boxes, pixel_size, material, progress, cancel, frames=frames, box=box)
            for k in range(3, len(p), 10):
                top = int(np.argmax(p[k]))
                p[k] = 0.45 / 5
                p[k, top] = 0.55
            return p

    truth = GroundTruth.from_dict(viewer.layers[0].metadata["ground_truth"])
    return TruthDetector(truth), ReviewTruthClassifier(truth)


@pytest.fixture
def analysed(viewer, truth_models, qtbot):
    """The viewer after a Defect analysis run (through the thread worker) -> (viewer, widget)."""
    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, "Defect analysis")
    widget.detector, widget.classifier = truth_models
    widget.start()
    # the first run in a process also imports and sets up torch in the worker (~15 s on
    # 2 free cores): generous, so a busy machine does not fail it
    qtbot.waitUntil(lambda: not widget.running, timeout=120000)
    assert widget.result is not None, widget.status
    return viewer, widget


def pytest_collection_modifyitems(config, items):
    """napari on a Qt5 backend warns about theme detection on every viewer: not ours."""
    for item in items:
        if "widgets" in item.nodeid:
            item.add_marker(pytest.mark.filterwarnings("ignore:System theme detection:UserWarning"))
