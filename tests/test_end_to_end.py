"""The shipped networks, end to end, against simulated ground truth.

Paper-preset MoTe2 frames (random rotation, 0.09-0.12 Å/px, Poisson λ 5-20) with 20 %
defective cells: on eight such 320² frames the pipeline found every cell and classed all
of them right (class accuracy 1.000, recall 1.000, precision ≥ 0.989), so the thresholds
below leave a margin without letting a broken model or stage pass.
"""

import json

import numpy as np
import pytest
import torch

from napari_tmd_defects.cli import main
from napari_tmd_defects.datasets import sample_conditions
from napari_tmd_defects.evaluation import score_result
from napari_tmd_defects.io import write_tiff
from napari_tmd_defects.pipeline import analyze
from napari_tmd_defects.simulation import simulate

pytestmark = pytest.mark.slow  # the shipped networks on CPU: a few seconds per frame


@pytest.fixture(scope="module")
def models():
    from napari_tmd_defects.classification import load_classifier
    from napari_tmd_defects.detection import load_detector

    torch.set_num_threads(2)
    return load_detector(None, device="cpu"), load_classifier(None, device="cpu")


def _paper_frame(seed: int, size: int = 320):
    kw = sample_conditions("paper", np.random.default_rng(seed), (size, size), pixel_size=(0.09, 0.12),
                           rotation="random", defect_fraction=0.2)
    return simulate("MoTe2", size, seed=seed, **kw)


@pytest.mark.parametrize("seed", [0, 2])
def test_shipped_networks_class_mote2_paper_frames_like_the_truth(models, seed):
    sim = _paper_frame(seed)
    t = sim.truth
    assert len({k for k in t.cell_label.tolist() if k > 0}) >= 3  # a frame with several defect classes
    det, clf = models
    res = analyze(sim.image, t.pixel_size, detector=det, classifier=clf)
    s = score_result(res, t)
    assert s.recall >= 0.97 and s.precision >= 0.97
    assert s.class_accuracy >= 0.95
    found, true = res.counts(), t.counts()
    assert sum(abs(found[k] - n) for k, n in true.items() if k != "Perfect") <= 2


def test_cli_analyze_with_the_shipped_networks_on_a_rotated_frame(tmp_path, capsys):
    sim = _paper_frame(7, size=288)
    t = sim.truth
    write_tiff(tmp_path / "frame.tif", sim.image, t.pixel_size)
    out = tmp_path / "out"
    assert main(["analyze", str(tmp_path / "frame.tif"), "--out", str(out), "--device", "cpu"]) == 0
    summary = json.loads((out / "frame_summary.json").read_text())
    assert summary["pixel_size_source"] == "metadata"
    true = t.counts()
    assert sum(abs(summary["counts"][k] - n) for k, n in true.items()) <= 2
    assert abs(summary["n_cells"] - t.n_cells) <= 2
    row = (out / "batch_summary.csv").read_text().splitlines()[1].split(",")
    assert row[1] == "ok" and int(row[2]) == summary["n_cells"]
    assert (out / "frame_overlay.png").stat().st_size > 10_000
    assert "frame.tif: " in capsys.readouterr().out
