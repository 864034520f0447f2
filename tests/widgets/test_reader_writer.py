"""Reader and writer contributions."""

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from napari_tmd_defects._widgets import _layers as L
from napari_tmd_defects._widgets._reader import get_reader
from napari_tmd_defects._widgets._writer import write_cell_table, write_shapes_csv
from napari_tmd_defects.io import write_tiff

from .conftest import PLUGIN


def test_reader_puts_pixel_size_into_scale(tmp_path):
    img = np.random.default_rng(0).random((40, 50)).astype(np.float32)
    path = write_tiff(tmp_path / "frame.tif", img, pixel_size=0.12)
    reader = get_reader(str(path))
    assert callable(reader)
    ((data, kwargs, kind),) = reader(str(path))
    assert kind == "image" and np.allclose(data, img)
    assert kwargs["scale"] == (0.12, 0.12) and kwargs["units"] == ("angstrom", "angstrom")
    assert kwargs["metadata"]["pixel_size_A"] == pytest.approx(0.12)
    assert kwargs["name"] == "frame"


def test_reader_8bit_png_and_refusals(tmp_path):
    rgb = np.zeros((30, 20, 3), np.uint8)
    rgb[..., 0] = 200
    Image.fromarray(rgb).save(tmp_path / "export.png")
    ((data, kwargs, _),) = get_reader(str(tmp_path / "export.png"))(str(tmp_path / "export.png"))
    assert data.shape == (30, 20) and "scale" not in kwargs and kwargs["metadata"]["pixel_size_A"] is None
    assert get_reader(str(tmp_path / "notes.txt")) is None
    (tmp_path / "broken.tif").write_bytes(b"not a tiff")
    assert get_reader(str(tmp_path / "broken.tif"))(str(tmp_path / "broken.tif")) is None
    np.save(tmp_path / "cube.npy", np.zeros((2, 3, 4, 5)))
    assert get_reader(str(tmp_path / "cube.npy"))(str(tmp_path / "cube.npy")) is None
    assert get_reader([str(tmp_path / "export.png"), str(tmp_path / "a.txt")]) is None


def test_reader_names_the_image_of_a_file_of_several(tmp_path):
    import json

    import h5py

    with h5py.File(tmp_path / "scan.nhdf", "w") as f:
        g = f.create_group("data")
        for k, title in enumerate(("BF", "HAADF")):
            cal = [{"offset": 0.0, "scale": 0.009, "units": "nm"}] * 2
            g.create_dataset(str(k), data=np.full((16, 16), k, np.float32)).attrs["properties"] = json.dumps(
                {"title": title, "dimensional_calibrations": cal})
    ((data, kwargs, _),) = get_reader(str(tmp_path / "scan.nhdf"))(str(tmp_path / "scan.nhdf"))
    assert np.all(data == 1) and kwargs["name"] == "scan [HAADF]" and kwargs["scale"] == pytest.approx((0.09, 0.09))


def test_analysis_reads_the_rgb_original_the_reader_kept(tmp_path, make_napari_viewer):
    rgb = np.repeat((np.random.default_rng(1).random((40, 50)) * 200).astype(np.uint8)[..., None], 3, axis=-1)
    rgb[30:33, 5:30] = (255, 255, 0)  # a yellow scale bar
    Image.fromarray(rgb).save(tmp_path / "export.png")
    viewer = make_napari_viewer()
    (layer,) = viewer.open(str(tmp_path / "export.png"), plugin=PLUGIN)
    assert layer.data.shape == (40, 50) and np.array_equal(L.image_data(layer), rgb)
    layer.data = layer.data[:20]  # an edited layer no longer matches its original: its own data
    assert L.image_data(layer).shape == (20, 50)


def test_a_series_opens_as_a_stack_the_analysis_asks_to_average(make_napari_viewer, tmp_path, qtbot):
    import json

    import h5py

    frames = np.random.default_rng(2).random((4, 32, 40)).astype(np.float32)
    with h5py.File(tmp_path / "series.h5", "w") as f:  # a Nion Swift sequence
        cal = [{"offset": 0.0, "scale": 1.0, "units": ""}] + [{"offset": 0.0, "scale": 0.01, "units": "nm"}] * 2
        f.create_dataset("data", data=frames).attrs["properties"] = json.dumps(
            {"title": "HAADF", "is_sequence": True, "dimensional_calibrations": cal})
    viewer = make_napari_viewer()
    (layer,) = viewer.open(str(tmp_path / "series.h5"), plugin=PLUGIN)
    assert layer.data.shape == (4, 32, 40) and np.allclose(layer.scale, [1.0, 0.1, 0.1])
    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, "Defect analysis")
    widget.ask = lambda title, text, options: None  # the offer to average declined
    widget.start()
    qtbot.waitUntil(lambda: not widget.running, timeout=60000)
    assert "series of 4 frames" in widget.status and "--stack sum" in widget.status


def test_open_through_napari(make_napari_viewer, tmp_path):
    viewer = make_napari_viewer()
    path = write_tiff(tmp_path / "frame.tif", np.ones((16, 16)), pixel_size=0.05)
    layers = viewer.open(str(path), plugin=PLUGIN)
    assert np.allclose(layers[0].scale, [0.05, 0.05]) and layers[0].metadata["pixel_size_A"] == 0.05


def test_writers(analysed, tmp_path):
    viewer, analysis = analysed
    res = analysis.result
    layers = L.result_layers(viewer, res)
    for role in ("centres", "cells"):
        data, attrs, _ = layers[role].as_layer_data_tuple()
        out = write_cell_table(str(tmp_path / f"{role}.csv"), data, attrs)
        assert [Path(p).name for p in out] == [f"{role}_cells.csv", f"{role}_image.tif", f"{role}_summary.json",
                                               f"{role}_result.npz", f"{role}.tmd.json"]
        lines = open(out[0]).read().splitlines()
        assert lines[0].startswith("x_min,y_min,x_max,y_max,defect,confidence") and len(lines) == res.n_cells + 1
    # through napari's save API with our writer
    viewer.layers.selection = {layers["centres"]}
    saved = viewer.layers.save(str(tmp_path / "table.csv"), selected=True, plugin=PLUGIN)
    assert saved and open(saved[0]).readline().startswith("x_min,")
    # without naming the plugin, a name ending in .tmd.json picks ours; for one Points layer
    # the save dialog lists napari's points CSV first (plugin order) and ours second
    saved = viewer.layers.save(str(tmp_path / "sel.tmd.json"), selected=True)
    assert [Path(p).name for p in saved][::4] == ["sel_cells.csv", "sel.tmd.json"]
    from napari.plugins._npe2 import file_extensions_string_for_layers

    ext_str, writers = file_extensions_string_for_layers([layers["centres"]])
    assert [w.command for w in writers[:2]] == ["napari.write_points", "napari-tmd-defects.write_cell_table"]
    assert ext_str.split(";;")[1].endswith("(*.tmd.json *.csv)")

    data, attrs, _ = layers["cells"].as_layer_data_tuple()
    (out,) = write_shapes_csv(str(tmp_path / "shapes"), data, attrs)
    assert out.endswith("shapes.csv")
    lines = open(out).read().splitlines()
    assert lines[0] == "index,shape-type,vertex-index,axis-0,axis-1,class,confidence"
    assert len(lines) == 4 * res.n_cells + 1 and lines[1].split(",")[1] == "polygon"
    assert lines[1].split(",")[5] == res.label_names()[0]

    image = viewer.layers["MoTe2 sample (simulated)"]
    with pytest.raises(ValueError, match="holds no napari-tmd-defects cells"):
        write_cell_table(str(tmp_path / "x.csv"), image.data, {"name": image.name, "metadata": {}})
    with pytest.raises(ValueError, match="none of these layers"):
        write_cell_table(str(tmp_path / "x.tmd.json"), [image.as_layer_data_tuple()])


def _reopen(viewer, path, plugin=PLUGIN):
    """Open ``path`` into ``viewer``; the reopened result and its layers."""
    before = set(viewer.layers)
    assert viewer.open(str(path), plugin=plugin) == []  # the reader adds its layers itself
    new = [lay for lay in viewer.layers if lay not in before]
    res = L.unwrap(next(lay.metadata[L.RESULT_KEY] for lay in new if L.RESULT_KEY in lay.metadata))
    return res, new


def test_save_all_and_reopen_round_trip(analysed, tmp_path, make_napari_viewer):
    """Corrected cells, classes, pixel size and material survive saving every layer and
    reopening the project file in a new viewer; the image and every result layer come back,
    and the Statistics dock shows the reopened result."""
    viewer, analysis = analysed
    res = analysis.result
    res.set_label([1, 4], 3)
    L.refresh(viewer, res)
    # napari's save dialog lists our writer first for these layers
    from napari.plugins._npe2 import file_extensions_string_for_layers

    ext_str, writers = file_extensions_string_for_layers(list(viewer.layers))
    assert writers[0].command == "napari-tmd-defects.write_cell_table" and "*.tmd.json" in ext_str.split(";;")[0]
    saved = viewer.layers.save(str(tmp_path / "frame.tmd.json"))  # no plugin: the name picks ours
    assert {Path(p).name for p in saved} >= {"frame_cells.csv", "frame_summary.json", "frame.tmd.json"}

    v2 = make_napari_viewer()
    back, new = _reopen(v2, tmp_path / "frame.tmd.json", plugin=None)  # only our reader opens *.tmd.json
    _, stats = v2.window.add_plugin_dock_widget(PLUGIN, "Statistics")
    names = {lay.name for lay in new}
    image_name = "MoTe2 sample (simulated)"
    assert {image_name, *(L.layer_name(image_name, r) for r in ("hexagons", "cells", "centres"))} <= names
    assert {f"{image_name} [sites]"} <= names
    image = v2.layers[image_name]
    assert np.allclose(image.data, viewer.layers[image_name].data, atol=1e-4)
    assert np.allclose(image.scale, [res.pixel_size] * 2) and image.metadata["material"] == res.material
    assert back.n_cells == res.n_cells and back.material == res.material
    assert back.pixel_size == pytest.approx(res.pixel_size)
    assert np.array_equal(back.labels, res.labels) and np.array_equal(back.corrected, res.corrected)
    assert np.array_equal(back.machine_labels, res.machine_labels) and back.corrected.sum() == 2
    assert len(v2.layers[L.layer_name(image_name, "hexagons")].data) == len(res.hexagon_boxes)
    pts = v2.layers[L.layer_name(image_name, "centres")]
    assert list(pts.features["class_id"]) == list(res.labels) and pts.features["corrected"].sum() == 2
    assert L.current_result(v2) is back and L.image_layer_of(v2, back) is image
    assert f"<b>{res.n_cells}</b> cells" in stats._summary.text() and "2 corrected" in stats._summary.text()


def test_summary_alone_and_missing_image(tmp_path, make_napari_viewer):
    """Files of Result.save (CLI, Statistics export: no project, no full result) reopen
    from the summary; without the image the cells are shown over nothing and the user is told."""
    from test_results_io import small_result

    from napari_tmd_defects.results_io import load_result

    res = small_result()
    paths = res.save(tmp_path, stem="frame")
    viewer = make_napari_viewer()
    back, new = _reopen(viewer, paths["summary"])
    assert back.n_cells == res.n_cells and np.array_equal(back.labels, res.labels)
    assert np.array_equal(back.corrected, res.corrected)
    assert back.material == res.material and back.pixel_size == pytest.approx(res.pixel_size)
    assert "frame" not in viewer.layers  # no image: only the result layers
    pts = viewer.layers[L.layer_name("frame", "centres")]
    assert len(pts.data) == res.n_cells and np.allclose(pts.scale, [res.pixel_size] * 2)
    notes = load_result(paths["summary"]).notes
    assert "shown without it" in notes[0] and any("hexagons" in n for n in notes)
    # with the image beside it (Statistics export names files after the image layer), it comes back
    write_tiff(tmp_path / "frame.tif", np.zeros(res.image_shape), pixel_size=res.pixel_size)
    back2, new = _reopen(viewer, paths["cells"])
    assert "frame (2)" in {lay.name for lay in new} and viewer.layers["frame (2)"].data.shape == res.image_shape
    # names do not clash: the first reopened layers still hold the first result
    first = viewer.layers[L.layer_name("frame", "centres")].metadata[L.RESULT_KEY]
    assert first is back and back2 is not back


def test_foreign_files_are_not_ours(tmp_path):
    (tmp_path / "points_cells.csv").write_text("index,axis-0,axis-1\n0,1.0,2.0\n")
    (tmp_path / "run_summary.json").write_text('{"software": "other", "n": 1}')
    (tmp_path / "x.tmd.json").write_text("not json")
    for name in ("points_cells.csv", "run_summary.json", "x.tmd.json"):
        assert get_reader(str(tmp_path / name)) is None
