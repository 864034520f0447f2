"""The scripted napari session of ``scripts/napari_session.py`` on the built-in sample:
open, analyse with the shipped networks, correct three cells (class key, Delete, a new
point), undo one, export, close, reopen — the same cells, classes and corrections come
back, in Å with a scale bar."""

import importlib.util
from pathlib import Path

import pytest

from napari_tmd_defects.datasets import sample_image
from napari_tmd_defects.io import write_tiff

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "napari_session.py"


@pytest.mark.slow
def test_scripted_session_survives_export_and_reopen(tmp_path, qapp):
    spec = importlib.util.spec_from_file_location("napari_session", SCRIPT)
    session = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(session)
    sim = sample_image()
    frame = write_tiff(tmp_path / "sample.tif", sim.image, sim.truth.pixel_size)
    rec = session.run_session(frame, tmp_path / "out")
    assert rec["checks"] and rec["passed"], rec["checks"]
    assert rec["analysis"]["pixel_size_source"] == "metadata"
    assert any(s.startswith("Delete on cell") for s in rec["steps"])
    assert (tmp_path / "out" / "3_reopened.png").is_file()
