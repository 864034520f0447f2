import json
import subprocess
import sys

from napari_tmd_defects import __version__
from napari_tmd_defects.cli import main


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


def test_demo_command(tmp_path):
    assert main(["demo", "--out", str(tmp_path)]) == 0
    for name in ("sample.tif", "sample_truth.json", "sample_truth.png"):
        assert (tmp_path / name).stat().st_size > 0


def test_errors_are_one_line(tmp_path, capsys):
    rc = main(["simulate", "--n", "1", "--out", str(tmp_path), "--material", "graphene"])
    assert rc == 1
    err = capsys.readouterr().err
    assert "unknown material" in err and "Traceback" not in err


def test_console_script_help():
    out = subprocess.run([sys.executable, "-m", "napari_tmd_defects.cli", "simulate", "--help"],
                         capture_output=True, text=True, check=True).stdout
    assert "--pixel-size" in out
