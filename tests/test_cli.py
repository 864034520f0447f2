import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import TruthClassifier, TruthDetector
from PIL import Image

from napari_tmd_defects import __version__, batch
from napari_tmd_defects.cli import main, progress_printer
from napari_tmd_defects.io import write_tiff
from napari_tmd_defects.simulation import GroundTruth, simulate


def test_version(capsys):
    try:
        main(["--version"])
    except SystemExit as e:
        assert e.code == 0
    assert __version__ in capsys.readouterr().out


def test_simulate_command(tmp_path, capsys):
    rc = main(["simulate", "--n", "2", "--size", "64", "80", "--out", str(tmp_path), "--seed", "3",
               "--pixel-size", "0.1", "0.12", "--preset", "realistic"])
    assert rc == 0
    index = json.loads((tmp_path / "dataset.json").read_text())
    assert index["n"] == 2 and index["size"] == [64, 80]
    assert (tmp_path / "images" / "00001.tif").exists()
    assert "wrote 2 images" in capsys.readouterr().out


@pytest.mark.slow
def test_demo_command_counts_match_its_ground_truth(tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path), "--device", "cpu", "--palette", "colorblind"]) == 0
    truth = GroundTruth.load(tmp_path / "sample_truth.json")
    summary = json.loads((tmp_path / "sample_summary.json").read_text())
    true, found = truth.counts(), summary["counts"]
    assert set(found) == set(true) and sum(true.values()) - true["Perfect"] >= 20  # every class, many defects
    for name, n in true.items():
        assert abs(found[name] - n) <= 1, (name, found[name], n)
    assert summary["n_cells"] == pytest.approx(truth.n_cells, abs=2)
    assert summary["pixel_size_A"] == pytest.approx(truth.pixel_size)
    out = capsys.readouterr().out
    acc = float(out.split("class accuracy ")[1].split(" %")[0])
    assert acc >= 97.0
    for name in ("sample.tif", "sample_truth.png", "sample_overlay.png", "sample_cells.csv"):
        assert (tmp_path / name).stat().st_size > 1000
    # the pictures carry a title band above the square frame
    for name in ("sample_truth.png", "sample_overlay.png"):
        w, h = Image.open(tmp_path / name).size
        assert h > w


@pytest.fixture
def frames(tmp_path, monkeypatch):
    """A good frame (ground-truth stand-ins for the networks) and three that hold nothing."""
    sim = simulate(shape=200, pixel_size=0.1, defect_fraction=0.3, seed=9)
    d = tmp_path / "in"
    d.mkdir()
    write_tiff(d / "good.tif", sim.image, 0.1)
    write_tiff(d / "zero.tif", np.zeros((200, 200), np.float32), 0.1)
    write_tiff(d / "constant.tif", np.full((200, 200), 7.0, np.float32), None)
    write_tiff(d / "noise.tif", np.random.default_rng(0).poisson(10, (200, 200)).astype(np.float32), None)
    monkeypatch.setattr(batch, "_models", lambda opts: (TruthDetector(sim.truth), TruthClassifier(sim.truth)))
    return d


def test_frames_that_yield_nothing_fail_and_the_exit_status_says_so(frames, tmp_path, capsys):
    out = tmp_path / "out"
    rc = main(["analyze", str(frames), "--out", str(out), "--palette", "colorblind"])
    assert rc == 1
    rows = {Path(r.split(",")[0]).name: r for r in (out / "batch_summary.csv").read_text().splitlines()[1:]}
    assert rows["good.tif"].split(",")[1] == "ok"
    for name, why in (("zero.tif", "constant"), ("constant.tif", "constant"), ("noise.tif", "no crystal lattice")):
        assert rows[name].split(",")[1] == "failed" and why in rows[name]
        assert not (out / f"{Path(name).stem}_cells.csv").exists()
    assert (out / "good_overlay.png").exists() and (out / "good_cells.csv").exists()
    cap = capsys.readouterr()
    assert "zero.tif: failed:" in cap.err and "3 failed" in cap.out
    # stderr is not a terminal here: plain progress lines, one per frame, no \r or escape codes
    assert "\r" not in cap.err and "\x1b" not in cap.err
    progress = [ln.split(" (")[0] for ln in cap.err.splitlines() if ln.startswith("analyze: ")]
    assert progress == [f"analyze: {k}/4" for k in range(1, 5)]
    # every frame analysed: exit status 0
    assert main(["analyze", str(frames / "good.tif"), "--out", str(tmp_path / "out2")]) == 0


def test_progress_is_a_tqdm_bar_on_a_terminal_and_plain_lines_otherwise():
    class Terminal(io.StringIO):
        def isatty(self):
            return True

    tty, plain = Terminal(), io.StringIO()
    for stream in (tty, plain):
        cb = progress_printer("simulate", stream=stream)
        for k in (0, 1, 1, 2, 3):
            cb(k, 3)
    assert "100%|" in tty.getvalue() and "3/3" in tty.getvalue()
    lines = plain.getvalue().splitlines()
    assert [ln.split(" (")[0] for ln in lines] == ["simulate: 0/3", "simulate: 1/3", "simulate: 2/3", "simulate: 3/3"]
    assert "\r" not in plain.getvalue() and "\x1b" not in plain.getvalue()


def test_analyze_help_states_the_exit_rule():
    out = subprocess.run([sys.executable, "-m", "napari_tmd_defects.cli", "analyze", "--help"],
                         capture_output=True, text=True, check=True).stdout
    flat = " ".join(out.split())
    assert "Exit status: 0 when every image was analysed, 1 when any image failed" in flat
    assert "--palette {paper,colorblind}" in flat


def test_errors_are_one_line(tmp_path, capsys):
    rc = main(["simulate", "--n", "1", "--out", str(tmp_path), "--material", "graphene"])
    assert rc == 1
    err = capsys.readouterr().err
    assert "unknown material" in err and "Traceback" not in err


def test_console_script_help():
    out = subprocess.run([sys.executable, "-m", "napari_tmd_defects.cli", "simulate", "--help"],
                         capture_output=True, text=True, check=True).stdout
    assert "--pixel-size" in out
