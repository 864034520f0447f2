import numpy as np
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
    assert res[0].pixel_size_source == "metadata"
    assert "estimated" in res[1].pixel_size_source and res[1].pixel_size == pytest.approx(0.1, rel=0.02)
    for stem in ("a", "b"):
        assert (out / f"{stem}_cells.csv").exists() and (out / f"{stem}_overlay.png").exists()
    assert not (out / "broken_cells.csv").exists()
    assert not list(out.glob("*.tmp")) and not list(out.glob(".*"))
    summary = (out / "batch_summary.csv").read_text().splitlines()
    assert len(summary) == 4 and ",failed," in summary[3]
    assert [o.status for o in res] == ["ok", "ok", "failed"]
    assert abs(res[0].n_cells - sim.truth.n_cells) <= 2 and res[1].n_cells == res[0].n_cells
    true = sim.truth.counts()
    assert sum(abs(res[0].counts[k] - n) for k, n in true.items()) <= 3  # stand-ins: cell 0 is made uncertain
    assert len(seen) == 3
    # the summary also holds every count's one-sigma uncertainty and the counts with the
    # unread chalcogen columns as the classifier calls them (the same cells, other classes);
    # a failed frame leaves them empty
    head = summary[0].split(",")
    row = dict(zip(head, summary[1].split(",")))
    for name, n in res[0].counts.items():
        assert int(row[f"n_{name}"]) == n
        assert float(row[f"sd_n_{name}"]) >= np.sqrt(n) - 0.01
        assert int(row[f"n_{name}_unread_as_classified"]) == res[0].counts_unread_as_classified[name]
    assert sum(res[0].counts_unread_as_classified.values()) == sum(res[0].counts.values())
    failed = dict(zip(head, summary[3].split(",")))
    assert failed["sd_n_Perfect"] == "" and failed["n_Perfect_unread_as_classified"] == ""


def test_frames_that_yield_nothing_fail_with_the_reason(files, tmp_path):
    d, _ = files
    write_tiff(d / "blank.tif", np.zeros((200, 200), np.float32), 0.1)
    write_tiff(d / "noise.tif", np.random.default_rng(3).normal(0, 1, (200, 200)).astype(np.float32), 0.1)
    out = tmp_path / "out"
    res = {o.stem: o for o in run_batch([d / "a.tif", d / "blank.tif", d / "noise.tif"], BatchOptions(out_dir=str(out)))}
    assert res["a"].ok and res["a"].status == "ok"
    assert not res["blank"].ok and res["blank"].status == "failed" and "constant" in res["blank"].message
    assert not res["noise"].ok and "no crystal lattice" in res["noise"].message
    assert res["blank"].n_cells == 0 and not (out / "blank_cells.csv").exists() and not (out / "blank_overlay.png").exists()
    rows = (out / "batch_summary.csv").read_text().splitlines()
    assert [r.split(",")[1] for r in rows[1:]] == ["ok", "failed", "failed"]
    assert "nothing to analyse" in rows[2]


def test_unknown_palette_fails_before_any_work(files, tmp_path):
    d, _ = files
    with pytest.raises(ValueError, match="palette"):
        run_batch([d / "a.tif"], BatchOptions(out_dir=str(tmp_path / "o"), palette="rainbow"))
    assert not (tmp_path / "o").exists()


def test_no_inputs(tmp_path):
    with pytest.raises(ValueError, match="no image files"):
        run_batch([tmp_path], BatchOptions(out_dir=str(tmp_path / "o")))


def _threads(_):
    import torch

    from napari_tmd_defects.parallel import cpu_threads

    return torch.get_num_threads(), cpu_threads()


def test_worker_processes_run_one_thread_each(array_threads):
    """A forked worker inherits its parent's torch threads; the batch's initializer sets one."""
    from concurrent.futures import ProcessPoolExecutor

    array_threads(2)
    with ProcessPoolExecutor(1, initializer=batch.one_thread) as ex:
        assert ex.submit(_threads, 0).result() == (1, 1)


def test_run_batch_starts_its_workers_on_one_thread(files, tmp_path, monkeypatch):
    seen = {}

    class Pool:
        def __init__(self, max_workers=None, initializer=None):
            seen["initializer"] = initializer

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def submit(self, fn, *args):
            from concurrent.futures import Future

            f = Future()
            f.set_result(fn(*args))
            return f

    monkeypatch.setattr(batch, "ProcessPoolExecutor", Pool)
    d, _ = files
    res = run_batch([d / "a.tif"], BatchOptions(out_dir=str(tmp_path / "out")), workers=2)
    assert seen["initializer"] is batch.one_thread and res[0].ok


def test_a_file_of_several_images_says_which_was_read(files, tmp_path):
    import json

    import h5py

    _, sim = files
    path = tmp_path / "scan.nhdf"
    with h5py.File(path, "w") as f:
        g = f.create_group("data")
        for k, (title, img) in enumerate((("BF", -sim.image), ("HAADF", sim.image))):
            cal = [{"offset": 0.0, "scale": 0.01, "units": "nm"}] * 2
            g.create_dataset(str(k), data=img.astype(np.float32)).attrs["properties"] = json.dumps(
                {"title": title, "dimensional_calibrations": cal})
    out = tmp_path / "out"
    (res,) = run_batch([path], BatchOptions(out_dir=str(out)))
    assert res.ok and res.pixel_size_source == "metadata" and abs(res.n_cells - sim.truth.n_cells) <= 2
    assert "read 'HAADF'" in res.warnings[0]
    assert "read 'HAADF'" in json.loads((out / "scan_summary.json").read_text())["warnings"][0]


def test_coloured_marks_of_an_rgb_file_are_left_out(files, tmp_path):
    from PIL import Image

    _, sim = files
    g = np.round(255 * (sim.image - sim.image.min()) / np.ptp(sim.image)).astype(np.uint8)
    rgb = np.repeat(g[..., None], 3, axis=-1)
    rgb[170:176, 10:120] = (255, 200, 0)  # an orange scale bar and a cyan label
    rgb[150:162, 10:60] = (0, 255, 255)
    path = tmp_path / "export.png"
    Image.fromarray(rgb).save(path)
    (res,) = run_batch([path], BatchOptions(out_dir=str(tmp_path / "out"), pixel_size=0.1))
    assert res.ok and any("burned-in annotation" in w for w in res.warnings)
    (plain,) = run_batch([tmp_path / "in" / "a.tif"], BatchOptions(out_dir=str(tmp_path / "out2")))
    assert res.n_cells < plain.n_cells
