import pytest

from napari_tmd_defects import batch
from napari_tmd_defects.batch import BatchOptions, expand_inputs, run_batch
from napari_tmd_defects.io import write_tiff
from napari_tmd_defects.simulation import simulate

from conftest import TruthClassifier, TruthDetector


@pytest.fixture
def files(tmp_path, monkeypatch):
    sim = simulate(shape=200, pixel_size=0.1, defect_fraction=0.3, seed=9)
    d = tmp_path / "in"
    d.mkdir()
    write_tiff(d / "a.tif", sim.image, 0.1)
    write_tiff(d / "b.tif", sim.image, None)  # no pixel size: estimated
    (d / "broken.tif").write_bytes(b"garbage")
    (d / "notes.txt").write_text("not an image")
    monkeypatch.setattr(batch, "_models", lambda opts: (TruthDetector(sim.truth), TruthClassifier(sim.truth)))
    return d, sim


def test_expand_inputs(files, tmp_path):
    d, _ = files
    names = [p.name for p in expand_inputs([d])]
    assert names == ["a.tif", "b.tif", "broken.tif"]
    assert [p.name for p in expand_inputs([str(d / "*.tif"), d / "a.tif"])] == ["a.tif", "b.tif", "broken.tif"]


def test_bad_file_is_skipped_and_others_finish(files, tmp_path):
    d, sim = files
    out = tmp_path / "out"
    seen = []
    res = run_batch([d], BatchOptions(out_dir=str(out)), on_result=seen.append)
    assert [o.ok for o in res] == [True, True, False]
    assert "broken.tif" in res[2].path and res[2].message
    assert res[0].pixel_size_source == "file metadata"
    assert "estimated" in res[1].pixel_size_source and res[1].pixel_size == pytest.approx(0.1, rel=0.02)
    for stem in ("a", "b"):
        assert (out / f"{stem}_cells.csv").exists() and (out / f"{stem}_overlay.png").exists()
    assert not (out / "broken_cells.csv").exists()
    assert not list(out.glob("*.tmp")) and not list(out.glob(".*"))
    summary = (out / "batch_summary.csv").read_text().splitlines()
    assert len(summary) == 4 and ",skipped," in summary[3]
    assert len(seen) == 3


def test_no_inputs(tmp_path):
    with pytest.raises(ValueError, match="no image files"):
        run_batch([tmp_path], BatchOptions(out_dir=str(tmp_path / "o")))
