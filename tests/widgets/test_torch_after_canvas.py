"""The networks load in a napari session whose canvas already exists (fresh process)."""

import os
import subprocess
import sys

import pytest

SCRIPT = """
import napari
viewer = napari.Viewer(show=False)
import numpy as np
viewer.add_image(np.eye(8))
import napari_tmd_defects._widgets  # what napari imports first when a dock opens
from napari_tmd_defects.detection import load_detector
from napari_tmd_defects.classification import load_classifier
load_detector(device="cpu"), load_classifier(device="cpu")
print("loaded")
"""


@pytest.mark.skipif(not os.environ.get("DISPLAY"), reason="needs an X display (run under xvfb-run)")
def test_networks_load_after_the_canvas_exists():
    out = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "loaded" in out.stdout
