"""Reader and writer contributions."""

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
        (out,) = write_cell_table(str(tmp_path / f"{role}.csv"), data, attrs)
        lines = open(out).read().splitlines()
        assert lines[0].startswith("x_min,y_min,x_max,y_max,defect,confidence") and len(lines) == res.n_cells + 1
    # through napari's save API with our writer
    viewer.layers.selection = {layers["centres"]}
    saved = viewer.layers.save(str(tmp_path / "table.csv"), selected=True, plugin=PLUGIN)
    assert saved and open(saved[0]).readline().startswith("x_min,")

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
