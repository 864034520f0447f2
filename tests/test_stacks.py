"""A series of frames aligned and averaged (stacks), read from files (io.read_stack) and
analysed from the command line (--stack sum)."""

import numpy as np
import pytest

from napari_tmd_defects.simulation import Noise, simulate
from napari_tmd_defects.stacks import align_and_sum


def _series(n: int = 5, size: int = 256, seed: int = 0):
    """``n`` noisy frames cut from one larger simulated frame along a drift (dy, dx) px,
    and the drift of each frame from the first (sub-pixel: the clean frame is shifted)."""
    from scipy import ndimage as ndi

    sim = simulate("MoTe2", size + 40, pixel_size=0.1, defect_fraction=0.1, seed=seed, noise=Noise(None, 0))
    rng = np.random.default_rng(seed)
    drift = np.cumsum(rng.uniform(-2.5, 2.5, (n, 2)), axis=0)
    drift -= drift[0]
    frames = []
    for d in drift:
        moved = ndi.shift(sim.image, -d, order=3, mode="nearest")[20:20 + size, 20:20 + size]
        counts = rng.poisson(np.clip(moved, 0, None) / sim.image.max() * 8.0)  # ~8 counts at the brightest column
        frames.append(counts + rng.normal(0, 0.5, counts.shape))
    return np.array(frames, np.float32), drift, sim


def test_a_drifting_low_dose_series_is_aligned_within_half_a_pixel():
    frames, drift, _ = _series()
    image, shifts = align_and_sum(frames)
    # frame k shows the scene moved by -drift[k]: shifting it by +drift[k] puts it back (at
    # ~8 counts per column the registration is noise-limited: 0.03 Å at 0.1 Å/px)
    assert np.abs(shifts - drift).max() < 0.5
    lo = np.ceil(np.clip(drift.max(axis=0), 0, None)).astype(int)
    assert image.shape[0] <= 256 - lo[0] and image.shape[0] >= 256 - int(np.ptp(drift[:, 0])) - 2
    # the average is the frames' mean: its noise falls by about sqrt(n)
    one = frames[0][5:-5, 5:-5]
    assert np.std(np.diff(image, axis=1)) < 0.7 * np.std(np.diff(one, axis=1))


def test_a_single_frame_and_bad_series():
    frames, _, _ = _series(n=1)
    image, shifts = align_and_sum(frames)
    assert np.array_equal(image, frames[0]) and shifts.shape == (1, 2) and not shifts.any()
    with pytest.raises(ValueError, match="frames, rows, cols"):
        align_and_sum(np.zeros((8, 8)))
    bad = np.array(_series(n=2)[0])
    bad[1, 3, 3] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        align_and_sum(bad)


def test_series_files_are_read_as_stacks(tmp_path):
    import json

    import h5py
    import tifffile

    from napari_tmd_defects.io import ImageReadError, read_image, read_stack

    frames, _, _ = _series(n=3, size=64)
    tifffile.imwrite(tmp_path / "series.tif", frames, photometric="minisblack")
    np.save(tmp_path / "series.npy", frames)
    with h5py.File(tmp_path / "series.h5", "w") as f:  # a Nion Swift sequence
        cal = [{"offset": 0.0, "scale": 1.0, "units": ""}] + [{"offset": 0.0, "scale": 0.01, "units": "nm"}] * 2
        f.create_dataset("data", data=frames).attrs["properties"] = json.dumps(
            {"title": "HAADF", "is_sequence": True, "dimensional_calibrations": cal})
    for name in ("series.tif", "series.npy", "series.h5"):
        stack, meta = read_stack(tmp_path / name)
        assert np.allclose(stack, frames) and meta["n_frames"] == 3
        with pytest.raises(ImageReadError, match="--stack sum"):
            read_image(tmp_path / name)
    assert read_stack(tmp_path / "series.h5")[1]["pixel_size_A"] == pytest.approx(0.1)
    np.save(tmp_path / "one.npy", frames[0])
    stack, meta = read_stack(tmp_path / "one.npy")
    assert stack.shape == (1, 64, 64) and meta["n_frames"] == 1


def test_the_cli_analyses_the_average_of_a_series(tmp_path, monkeypatch):
    import json

    import tifffile

    from napari_tmd_defects import batch
    from napari_tmd_defects.batch import BatchOptions, run_batch

    from conftest import TruthClassifier, TruthDetector

    frames, _, sim = _series(n=4, size=256, seed=2)
    tifffile.imwrite(tmp_path / "series.tif", frames, photometric="minisblack")
    monkeypatch.setattr(batch, "_models", lambda opts: (TruthDetector(sim.truth), TruthClassifier(sim.truth)))
    (refused,) = run_batch([tmp_path / "series.tif"], BatchOptions(out_dir=str(tmp_path / "a"), pixel_size=0.1))
    assert not refused.ok and "--stack sum" in refused.message
    (res,) = run_batch([tmp_path / "series.tif"], BatchOptions(out_dir=str(tmp_path / "b"), pixel_size=0.1,
                                                               stack="sum", classify=False))
    assert res.ok and res.n_cells > 30 and "a series of 4 frames" in res.warnings[0]
    summary = json.loads((tmp_path / "b" / "series_summary.json").read_text())
    assert "a series of 4 frames" in summary["warnings"][0]
