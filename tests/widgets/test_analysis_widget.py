"""Defect analysis dock widget: layers, features, colours, worker, cancel and errors."""

import threading

import numpy as np
import pytest

from napari_tmd_defects._widgets import _layers as L
from napari_tmd_defects.geometry import box_iou
from napari_tmd_defects.materials import CLASS_COLORS
from napari_tmd_defects.runtime import Cancelled
from napari_tmd_defects.simulation import GroundTruth

from .conftest import PLUGIN

NAME = "MoTe2 sample (simulated)"


def test_run_makes_layers_with_features(analysed):
    viewer, widget = analysed
    res = widget.result
    truth = GroundTruth.from_dict(viewer.layers[NAME].metadata["ground_truth"])
    # the cells found on the columns are the true cells, with their true classes
    iou = box_iou(res.boxes, truth.cell_box)
    assert res.n_cells >= 0.98 * truth.n_cells and np.all(iou.max(axis=1) > 0.95)
    assert np.array_equal(res.labels, truth.cell_label[iou.argmax(axis=1)])
    names = {r: L.layer_name(NAME, r) for r in ("hexagons", "cells", "centres")}
    for role, name in names.items():
        lay = viewer.layers[name]
        assert lay.metadata[L.RESULT_KEY] is res
        assert np.allclose(lay.scale, [0.09, 0.09])
    pts = viewer.layers[names["centres"]]
    assert len(pts.data) == res.n_cells
    feats = pts.features
    assert list(feats.columns[:5]) == ["class", "class_id", "confidence", "flagged", "corrected"]
    assert list(feats["class"].astype(str)) == res.label_names()
    assert np.array_equal(feats["class_id"], res.labels)
    assert feats["flagged"].sum() == res.flagged.sum() > 0
    # paper colours: face colour of each point = its class colour
    v_mo = int(np.flatnonzero(res.labels == 3)[0])
    assert np.allclose(pts.face_color[v_mo, :3], CLASS_COLORS[3])
    shapes = viewer.layers[names["cells"]]
    assert shapes.nshapes == res.n_cells and set(shapes.shape_type) == {"polygon"}
    assert np.allclose(shapes.edge_color[v_mo, :3], CLASS_COLORS[3])
    # rectangle corners are the cell box in (row, col) px
    x0, y0, x1, y1 = res.boxes[v_mo]
    assert np.allclose(shapes.data[v_mo].min(axis=0), [y0, x0]) and np.allclose(shapes.data[v_mo].max(axis=0), [y1, x1])
    assert viewer.layers[names["hexagons"]].nshapes == len(res.hexagon_boxes)
    assert widget._progress.value == widget._progress.max
    assert f"{res.n_cells} cells" in widget.status


def test_rerun_updates_layers_in_place_and_labels_option(analysed, qtbot):
    viewer, widget = analysed
    n_layers = len(viewer.layers)
    pts = viewer.layers[L.layer_name(NAME, "centres")]
    first = widget.result
    widget._labels.value = True
    res = widget.run()  # the synchronous variant for scripts
    assert res is not first and widget.result is res
    assert viewer.layers[L.layer_name(NAME, "centres")] is pts and pts.metadata[L.RESULT_KEY] is res
    assert len(viewer.layers) == n_layers + 1  # only the Labels layer was added
    lab = viewer.layers[L.layer_name(NAME, "labels")].data
    k = int(np.flatnonzero(res.labels == 2)[0])
    x0, y0, x1, y1 = res.boxes[k]
    assert lab[int(np.ceil(y0)) + 2, int(np.ceil(x0)) + 2] == 3  # class id + 1


def test_cancel_keeps_previous_layers(analysed, qtbot):
    viewer, widget = analysed
    before = widget.result
    started = threading.Event()
    base = widget.detector

    class SlowDetector:
        card = {"name": "slow"}

        def detect(self, image, pixel_size, material="MoTe2", progress=None, cancel=None):
            started.set()
            for _ in range(3000):
                if cancel is not None and cancel():
                    raise Cancelled("cancelled by the user")
                threading.Event().wait(0.01)
            return base.detect(image, pixel_size, material)

    widget.detector = SlowDetector()
    widget._run_btn.clicked.emit()
    assert widget.running and widget._cancel_btn.enabled and not widget._run_btn.enabled
    assert started.wait(10)
    widget._cancel_btn.clicked.emit()
    qtbot.waitUntil(lambda: not widget.running, timeout=10000)
    assert "cancelled" in widget.status
    assert widget.result is before
    assert viewer.layers[L.layer_name(NAME, "centres")].metadata[L.RESULT_KEY] is before
    assert widget._run_btn.enabled and not widget._cancel_btn.enabled


def test_missing_model_is_reported_in_the_widget(viewer, qtbot, tmp_path):
    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, "Defect analysis")
    widget.detector = str(tmp_path / "no_such_detector.pt")
    widget.start()
    qtbot.waitUntil(lambda: not widget.running, timeout=120000)
    assert widget.status.startswith("model missing"), widget.status
    assert widget.result is None
    assert not any(L.RESULT_KEY in lay.metadata for lay in viewer.layers)


def test_bad_input_is_reported_in_the_widget(make_napari_viewer, qtbot):
    viewer = make_napari_viewer()
    viewer.add_image(np.zeros((3, 64, 64)), name="stack", rgb=False)
    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, "Defect analysis")
    widget.ask = _answers(None)  # not averaged
    widget.start()
    qtbot.waitUntil(lambda: not widget.running, timeout=120000)
    assert widget.status.startswith("cannot analyse this image") and "2-D" in widget.status
    assert "series of 3 frames" in widget.status and "--stack sum" in widget.status


def test_pixel_size_prefilled_from_metadata(viewer):
    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, "Defect analysis")
    assert widget._pixel.value == pytest.approx(0.09)
    viewer.add_image(np.zeros((64, 64)), name="unscaled")
    widget.set_image("unscaled")
    assert widget._pixel.value == 0.0  # 0 = estimate from the lattice


def test_real_models_on_the_sample(viewer, qtbot):
    """End to end with the shipped networks (skipped until they are installed)."""
    try:
        from napari_tmd_defects.classification import load_classifier
        from napari_tmd_defects.detection import load_detector
    except ImportError as exc:
        pytest.skip(f"the networks are not part of this installation yet ({exc})")
    from napari_tmd_defects.runtime import WeightsError

    try:
        load_detector(device="cpu")
        load_classifier(device="cpu")
    except WeightsError as exc:
        pytest.skip(f"shipped weights missing: {exc}")
    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, "Defect analysis")
    widget._device.value = "cpu"
    widget.start()
    qtbot.waitUntil(lambda: not widget.running, timeout=300000)
    res = widget.result
    assert res is not None, widget.status
    truth = viewer.layers[NAME].metadata["ground_truth"]
    assert res.n_cells >= 0.9 * truth["n_cells"]
    assert len(viewer.layers[L.layer_name(NAME, "centres")].data) == res.n_cells
    assert res.checks["hexagons"] == "frame" and res.models["classifier"]["model"] == "resnet18"
    # "fast": hexagons on one tile per domain, the distilled classifier; the same cells
    widget._speed.value = "fast"
    widget.ask = lambda title, text, options: "replace"
    fast = widget.run()
    assert fast.checks["hexagons"] == "sample" and fast.models["classifier"]["model"] == "small"
    np.testing.assert_array_equal(fast.boxes, res.boxes)
    assert np.mean(fast.labels == res.labels) > 0.97
    # the site-state head is on by default; a binary is read from its heights (the head not loaded)
    assert widget._site_head.value and "site_head" not in fast.models
    widget._site_head.value = False
    plain = widget.run()
    np.testing.assert_array_equal(plain.labels, fast.labels)


def test_image_without_lattice_adds_no_layers(make_napari_viewer):
    viewer = make_napari_viewer()
    viewer.add_image(np.random.default_rng(0).normal(size=(128, 128)), name="noise")
    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, "Defect analysis")
    res = widget.run()  # pixel size 0: estimated, which fails before any model is needed
    assert res.n_cells == 0 and widget.result is None
    assert [lay.name for lay in viewer.layers] == ["noise"]  # no empty layers
    assert widget.status.startswith("no unit cells found, so no layers were added")
    assert "no crystal lattice" in widget.status
    for text in (widget.status, widget.pixel_info):
        assert "nan" not in text and "(given)" not in text
    assert "typed —" in widget.pixel_info and "file —" in widget.pixel_info


def test_vacuum_is_shown_and_its_cells_left_out(make_napari_viewer):
    from napari_tmd_defects.simulation import Noise, Vacuum, simulate

    sim = simulate(shape=384, pixel_size=0.09, vacuum=Vacuum("edge", 0.3), noise=Noise(12, 20), seed=4)
    viewer = make_napari_viewer()
    viewer.add_image(sim.image, name="edge", scale=(0.09, 0.09), metadata={"pixel_size_A": 0.09})
    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, "Defect analysis")
    widget._device.value = "cpu"
    res = widget.run()
    vac = viewer.layers["edge [vacuum]"]
    assert vac.data.any() and np.allclose(vac.scale, [0.09, 0.09])
    assert abs(res.n_cells - sim.truth.n_cells) <= 0.03 * sim.truth.n_cells


def test_an_inset_is_shown_and_its_cells_left_out(make_napari_viewer):
    # a figure panel: the frame's own power spectrum pasted into its top-right corner
    from napari_tmd_defects.simulation import Noise, simulate

    sim = simulate(shape=384, pixel_size=0.1, rotation_deg=12.0, noise=Noise(10, 10), seed=21)
    img = sim.image.astype(np.float32)
    spec = np.log1p(np.fft.fftshift(np.abs(np.fft.fft2(img - img.mean()))))[127:257, 127:257]
    lo, hi = np.percentile(img, [0.5, 99.5])
    img[:130, -130:] = lo + (spec - spec.min()) / np.ptp(spec) * (hi - lo)
    viewer = make_napari_viewer()
    viewer.add_image(img, name="panel", scale=(0.1, 0.1), metadata={"pixel_size_A": 0.1})
    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, "Defect analysis")
    widget._device.value = "cpu"
    res = widget.run()
    inset = viewer.layers["panel [inset]"]
    assert inset.data[:130, -130:].mean() > 0.95 and np.allclose(inset.scale, [0.1, 0.1])
    centres = 0.5 * (res.x_sites + res.m_sites)
    assert not ((centres[:, 1] < 130) & (centres[:, 0] >= 254)).any()


def test_an_alloy_shows_its_site_states(make_napari_viewer):
    from napari_tmd_defects.simulation import Noise, simulate

    sim = simulate("Mo0.7W0.3Te2", shape=320, pixel_size=0.1, noise=Noise(12, 20), seed=6)
    viewer = make_napari_viewer()
    viewer.add_image(sim.image, name="alloy", scale=(0.1, 0.1), metadata={"pixel_size_A": 0.1})
    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, "Defect analysis")
    widget._device.value = "cpu"
    widget._composition.value = "Mo0.7W0.3Te2"
    res = widget.run()
    assert res.material == "Mo0.7W0.3Te2"
    lay = viewer.layers["alloy [site states]"]
    states = set(lay.features["state"])
    assert "W" in states and "Mo" not in states  # the host is not marked
    n_w = res.site_state_counts()["M"]["W"]  # on the cells' sites (the layer also marks the rest)
    true_w = int(np.sum(sim.truth.cell_m_z == 74))
    assert abs(n_w - true_w) <= max(3, 0.1 * true_w)
    assert np.sum(lay.features["state"] == "W") >= n_w
    widget._composition.value = "Mo0.7Q0.3Te2"
    widget.start()
    assert "unknown element" in widget.status


def _answers(*keys):
    """An ``ask`` hook that answers ``keys`` in turn and records the questions."""
    asked = []

    def ask(title, text, options):
        asked.append((title, text, dict(options)))
        return keys[len(asked) - 1]

    ask.asked = asked
    return ask


def test_pixel_size_off_by_10x_asks_and_no_keeps_the_old_result(analysed, qtbot):
    viewer, widget = analysed
    good = widget.result
    image = viewer.layers[NAME]
    n_layers = len(viewer.layers)
    assert good.pixel_size_source == "metadata" and widget.pixel_info.startswith("file 0.09 · typed — · lattice ")
    assert float(widget.pixel_info.split("lattice ")[1].split()[0]) == pytest.approx(0.09, rel=0.01)

    widget.set_pixel_size(0.9)  # a typo: 10x the file's value
    assert "typed 0.9" in widget.pixel_info
    widget.ask = _answers(None)  # the user cancels the question
    widget.start()
    qtbot.waitUntil(lambda: not widget.running, timeout=120000)
    (title, text, options), = widget.ask.asked
    assert "disagrees with the lattice" in title and "given pixel size 0.9 Å/px" in text
    assert set(options) == {"lattice", "given"}
    assert float(options["lattice"].split()[1]) == pytest.approx(0.09, rel=0.01)
    assert f"implies {options['lattice'].split()[1]} Å/px" in text
    assert widget.result is good and "not run" in widget.status
    assert viewer.layers[L.layer_name(NAME, "centres")].metadata[L.RESULT_KEY] is good
    assert len(viewer.layers) == n_layers and widget._progress.value == 0

    widget.ask = _answers("lattice")  # the lattice wins; a plain re-run replaces without asking
    res = widget.run()
    assert len(widget.ask.asked) == 1
    assert res.pixel_size_source == "lattice" and res.pixel_size == pytest.approx(0.09, rel=0.01)
    assert any(w.startswith("PIXEL SIZE REPLACED") for w in widget.warnings)
    assert "from the lattice" in widget.status and np.allclose(image.scale, res.pixel_size)

    widget.set_pixel_size(0.9)  # typed again: asked again
    widget.ask = _answers("given", "discard")  # keep 0.9, then refuse to replace the result
    current = widget.result
    assert widget.run().pixel_size == pytest.approx(0.9)
    assert [q[0] for q in widget.ask.asked] == ["Pixel size disagrees with the lattice", "Replace the previous result?"]
    assert widget.result is current and "discarded" in widget.status
    assert np.allclose(image.scale, current.pixel_size)  # the scale of the result shown
    assert viewer.layers[L.layer_name(NAME, "centres")].metadata[L.RESULT_KEY] is current

    widget.ask = _answers("keep")  # the answer "given" is remembered; keep both results
    new = widget.run()
    assert len(widget.ask.asked) == 1 and widget.result is new and new.pixel_size_source == "given"
    assert viewer.layers[L.layer_name(NAME, "centres")].metadata[L.RESULT_KEY] is new
    old = [lay for lay in viewer.layers if lay.name.endswith("(run 1)")]
    assert len(old) == n_layers - 1 and all(lay.metadata.get(L.RESULT_KEY, current) is current for lay in old)


def test_layers_get_the_physical_scale_and_units(make_napari_viewer):
    from conftest import TruthClassifier, TruthDetector

    from napari_tmd_defects.datasets import sample_image

    sim = sample_image()
    viewer = make_napari_viewer()
    image = viewer.add_image(sim.image, name="raw")  # no metadata, no scale
    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, "Defect analysis")
    widget.detector, widget.classifier = TruthDetector(sim.truth), TruthClassifier(sim.truth)
    assert np.allclose(image.scale, 1.0) and widget._pixel.value == 0.0
    res = widget.run()
    assert res.pixel_size_source == "estimated" and res.pixel_size == pytest.approx(0.09, rel=0.01)
    assert "estimated from the lattice" in widget.status and "(given)" not in widget.status
    assert "typed —" in widget.pixel_info and "estimated" in widget.pixel_info
    assert widget._pixel.value == 0.0  # the next run estimates again (not "given")
    assert viewer.scale_bar.visible
    pts = viewer.layers[L.layer_name("raw", "centres")]
    for lay in [image, *(lay for lay in viewer.layers if lay.name.startswith("raw ["))]:
        assert np.allclose(lay.scale, res.pixel_size), lay.name
        assert [str(u) for u in lay.units] == ["angstrom", "angstrom"], lay.name
    # a cell centre (px) and the image pixel under it are the same point of the world (Å)
    r, c = pts.data[5]
    assert np.allclose(pts.data_to_world(pts.data[5]), image.data_to_world([r, c]))
    assert np.allclose(pts.data_to_world(pts.data[5]), np.array([r, c]) * res.pixel_size)
    # a typed pixel size scales the image (and its result layers) at once
    widget.set_pixel_size(0.1)
    assert np.allclose(image.scale, 0.1) and np.allclose(pts.scale, 0.1)
    assert image.metadata["tmd_defects_typed_pixel_size_A"] == 0.1 and "typed 0.1" in widget.pixel_info


def test_progress_in_the_activity_dock_and_cancel_resets(analysed, qtbot):
    from napari.utils import progress

    viewer, widget = analysed
    before = widget.result
    base = widget.detector
    gate = threading.Event()
    seen = []

    class TiledDetector:
        card = {"name": "tiles"}

        def detect(self, image, pixel_size, material="MoTe2", progress=None, cancel=None):
            for k in range(4):
                progress(k + 1, 4)
                gate.wait(5)
                gate.clear()
                if cancel():
                    raise Cancelled("cancelled by the user")
            return base.detect(image, pixel_size, material)

    widget.detector = TiledDetector()
    widget.start()
    qtbot.waitUntil(lambda: widget._pbar is not None and widget._pbar.n >= 30, timeout=10000)
    bar = widget._pbar
    assert bar in progress._all_instances and "hexagons" in bar.desc
    seen.append(widget._progress.value)
    gate.set()
    qtbot.waitUntil(lambda: bar.n >= 40, timeout=10000)
    widget.cancel()
    gate.set()
    qtbot.waitUntil(lambda: not widget.running, timeout=10000)
    assert 20 < seen[0] < 60
    assert bar not in progress._all_instances and widget._pbar is None
    assert widget._progress.value == 0 and "cancelled" in widget.status
    assert widget.result is before
    assert viewer.layers[L.layer_name(NAME, "centres")].metadata[L.RESULT_KEY] is before


def test_what_the_reader_said_of_the_file_heads_the_warnings(make_napari_viewer, tmp_path):
    import matplotlib
    from PIL import Image

    from napari_tmd_defects.simulation import Noise, simulate

    sim = simulate("MoTe2", shape=256, pixel_size=0.09, defect_fraction=0.1, seed=4, noise=Noise(12, 20))
    idx = np.round(255 * (sim.image - sim.image.min()) / np.ptp(sim.image)).astype(np.uint8)
    lut = np.round(255 * matplotlib.colormaps["jet"](np.linspace(0, 1, 256))[:, :3]).astype(np.uint8)
    Image.fromarray(lut[idx]).save(tmp_path / "jet.png")
    viewer = make_napari_viewer()
    (layer,) = viewer.open(str(tmp_path / "jet.png"), plugin=PLUGIN)
    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, "Defect analysis")
    widget.set_pixel_size(0.09)
    res = widget.run(classify=False)
    assert res.n_cells > 20 and "'jet' colour map" in res.warnings[0]


def test_a_series_is_averaged_into_a_new_layer_and_analysed(make_napari_viewer, qtbot):
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from test_stacks import _series

    frames, drift, _ = _series(n=4, size=192, seed=1)
    viewer = make_napari_viewer()
    viewer.add_image(frames, name="series", scale=(1.0, 0.1, 0.1), units=("pixel", "angstrom", "angstrom"))
    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, "Defect analysis")
    widget.set_pixel_size(0.1)
    widget.ask = _answers(None)
    assert widget.run() is None and "series of 4 frames" in widget.status  # declined: nothing added
    assert [lay.name for lay in viewer.layers] == ["series"]
    widget.ask = _answers("average")
    widget.start()  # the alignment, then the analysis, in workers
    qtbot.waitUntil(lambda: widget.result is not None and not widget.running, timeout=120000)
    mean = viewer.layers["series [aligned mean]"]
    assert mean.ndim == 2 and mean.data.shape[0] <= 192 and np.allclose(mean.scale, [0.1, 0.1], rtol=1e-3)
    assert widget.result.n_cells > 20 and any("a series of 4 frames" in w for w in widget.result.warnings)
    # the average lies on the first frame's pixels: its origin is the region's corner
    assert np.all(np.asarray(mean.translate) >= 0)
