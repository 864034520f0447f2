import numpy as np


def test_open_sample_in_viewer(make_napari_viewer):
    viewer = make_napari_viewer(show=True)
    layers = viewer.open_sample("napari-tmd-defects", "mote2_defects")
    assert len(layers) == 1
    layer = viewer.layers[0]
    assert layer.data.shape == (512, 512)
    assert np.allclose(layer.scale, [0.09, 0.09])
    assert layer.metadata["pixel_size_A"] == 0.09
    assert layer.metadata["ground_truth"]["n_cells"] > 150
    shot = viewer.screenshot(canvas_only=True)
    assert shot.ndim == 3 and shot[..., :3].std() > 5  # something was drawn
