"""Saving an analysis and reopening it (Qt-free)."""

import copy
import dataclasses
import json
from functools import lru_cache

import numpy as np
import pytest

from napari_tmd_defects.results_io import (
    ResultReadError,
    is_result_file,
    load_result,
    result_from_npz,
    result_stem,
    result_to_npz,
    save_result,
)


@lru_cache(maxsize=1)
def _analysed():
    from conftest import TruthClassifier, TruthDetector

    from napari_tmd_defects.datasets import sample_image
    from napari_tmd_defects.pipeline import analyze

    sim = sample_image(size=256)
    res = analyze(sim.image, sim.truth.pixel_size, detector=TruthDetector(sim.truth),
                  classifier=TruthClassifier(sim.truth))
    return sim.image, res


def small_result():
    """A fresh analysed 256 × 256 px MoTe2 frame (ground-truth models) with two corrected cells."""
    res = copy.deepcopy(_analysed()[1])
    res.set_label([0, 2], 4)
    return res


def _same(a, b, where="result"):
    """Assert two results (or parts of them) are equal, field by field."""
    if dataclasses.is_dataclass(a):
        assert type(a) is type(b), where
        for f in dataclasses.fields(a):
            _same(getattr(a, f.name), getattr(b, f.name), f"{where}.{f.name}")
    elif isinstance(a, np.ndarray):
        assert isinstance(b, np.ndarray) and a.shape == b.shape and a.dtype.kind == b.dtype.kind, where
        assert np.array_equal(a.astype(str), b.astype(str)) if a.dtype.kind == "O" else \
            np.array_equal(a, b, equal_nan=a.dtype.kind == "f"), where
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for k in a:
            _same(a[k], b[k], f"{where}[{k!r}]")
    elif isinstance(a, (list, tuple)):
        assert type(a) is type(b) and len(a) == len(b), where
        for k, (x, y) in enumerate(zip(a, b)):
            _same(x, y, f"{where}[{k}]")
    elif isinstance(a, float) and a != a:
        assert b != b, where
    else:
        assert a == b, (where, a, b)


def test_whole_result_round_trips_through_npz(tmp_path):
    res = small_result()
    assert res.sites is not None and res.site_states is not None and len(res.hexagon_boxes)
    back = result_from_npz(result_to_npz(res, tmp_path / "r.npz"))
    _same(res, back)
    assert back.summary() == res.summary()
    assert back.corrected.sum() == 2 and not np.array_equal(back.labels, back.machine_labels)


def test_save_and_reopen_from_each_file(tmp_path):
    image, _ = _analysed()
    res = small_result()
    paths = save_result(res, tmp_path / "out" / "frame_cells.csv", image=image, image_name="frame")
    assert {k: p.name for k, p in paths.items()} == {
        "cells": "frame_cells.csv", "image": "frame_image.tif", "summary": "frame_summary.json",
        "result": "frame_result.npz", "project": "frame.tmd.json"}
    summary = json.loads(paths["summary"].read_text())
    assert summary["source_image"] == "frame_image.tif" and summary["n_corrected"] == 2
    for kind in ("project", "summary", "cells"):
        assert is_result_file(paths[kind])
        opened = load_result(paths[kind])
        assert opened.complete and opened.notes == [] and opened.image_name == "frame"
        _same(res, opened.result)
        assert np.allclose(opened.image, image, atol=1e-5)


def test_image_is_found_relative_then_absolute(tmp_path):
    from napari_tmd_defects.io import write_tiff

    image, _ = _analysed()
    res = small_result()
    src = write_tiff(tmp_path / "raw" / "frame.tif", image, res.pixel_size)
    paths = save_result(res, tmp_path / "results" / "frame", image_source=src)
    assert "image" not in paths  # the image has a file: only its path is recorded
    project = json.loads(paths["project"].read_text())
    assert project["image"] == "../raw/frame.tif"
    # the results folder moved elsewhere: the absolute path still finds the image
    moved = tmp_path / "elsewhere"
    (tmp_path / "results").rename(moved)
    opened = load_result(moved / "frame.tmd.json")
    assert opened.image is not None and opened.notes == []
    # the image gone: the result opens without it and says so
    src.unlink()
    opened = load_result(moved / "frame.tmd.json")
    assert opened.image is None and "was not found" in opened.notes[0]
    assert opened.result.n_cells == res.n_cells


def test_table_and_summary_without_the_full_result(tmp_path):
    """Files of Result.save (CLI, Statistics export): cells, classes, corrected flags,
    confidences, pixel size, material and statistics come back."""
    res = small_result()
    paths = res.save(tmp_path, stem="frame")
    opened = load_result(paths["cells"])
    back = opened.result
    assert not opened.complete and any("hexagons" in n for n in opened.notes)
    assert back.n_cells == res.n_cells and back.material == res.material
    assert back.pixel_size == pytest.approx(res.pixel_size)
    assert np.array_equal(back.labels, res.labels) and np.array_equal(back.corrected, res.corrected)
    assert np.array_equal(back.flagged, res.flagged) and np.allclose(back.confidence, res.confidence, atol=1e-4)
    assert np.allclose(back.boxes, res.boxes, atol=0.006) and np.allclose(back.probabilities, res.probabilities)
    assert back.counts() == res.counts() and back.area_nm2 == pytest.approx(res.area_nm2)
    assert back.concentrations_cm2() == pytest.approx(res.concentrations_cm2())
    # the classes before the corrections are not in the table: unknown (-1) for corrected cells
    assert np.all(back.machine_labels[back.corrected] == -1)
    assert np.array_equal(back.machine_labels[~back.corrected], res.labels[~back.corrected])


def test_foreign_and_damaged_files_get_clear_errors(tmp_path):
    foreign = tmp_path / "points_cells.csv"
    foreign.write_text("index,axis-0,axis-1\n0,1.0,2.0\n")
    assert not is_result_file(foreign)
    with pytest.raises(ResultReadError, match="not a napari-tmd-defects cell table: its columns are index"):
        load_result(foreign)
    (tmp_path / "run_summary.json").write_text('{"software": "other"}')
    with pytest.raises(ResultReadError, match="not a napari-tmd-defects summary"):
        load_result(tmp_path / "run_summary.json")
    (tmp_path / "table.txt").write_text("x_min\n")
    with pytest.raises(ResultReadError, match="expected a name ending in"):
        load_result(tmp_path / "table.txt")
    with pytest.raises(FileNotFoundError):
        load_result(tmp_path / "none_cells.csv")

    res = small_result()
    paths = res.save(tmp_path, stem="frame")
    paths["summary"].unlink()
    with pytest.raises(ResultReadError, match="frame_summary.json .* not beside it"):
        load_result(paths["cells"])
    res.save(tmp_path, stem="frame")
    lines = paths["cells"].read_text().splitlines()
    paths["cells"].write_text("\n".join([lines[0], lines[1].replace(",", ";", 3), *lines[2:]]) + "\n")
    with pytest.raises(ResultReadError, match="line 2 has"):
        load_result(paths["summary"])
    (tmp_path / "frame_result.npz").write_bytes(b"PK not a zip")
    with pytest.raises(ResultReadError, match="not a saved napari-tmd-defects result"):
        load_result(paths["summary"])


def test_npz_only_builds_classes_of_this_package(tmp_path):
    res = small_result()
    path = result_to_npz(res, tmp_path / "r.npz")
    with np.load(path) as z:
        arrays = {k: z[k] for k in z.files}
    tree = json.loads(str(arrays["__tree__"]))
    tree["result"]["class"] = "subprocess:Popen"
    arrays["__tree__"] = np.array(json.dumps(tree))
    np.savez(path, **arrays)
    with pytest.raises(ResultReadError, match="refusing to build 'subprocess:Popen'"):
        result_from_npz(path)


@pytest.mark.parametrize("name, stem", [("a/frame_cells.csv", "frame"), ("a/frame.tmd.json", "frame"),
                                        ("a/frame_summary.json", "frame"), ("a/table.csv", "table"),
                                        ("a/run.2", "run.2")])
def test_result_stem(name, stem):
    folder, s = result_stem(name)
    assert s == stem and folder.name == "a"
