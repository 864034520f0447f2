import csv

import numpy as np
import pytest
import torch

from napari_tmd_defects import classification as C
from napari_tmd_defects.cli import main
from napari_tmd_defects.datasets import generate_dataset, sample_image
from napari_tmd_defects.io import write_tiff
from napari_tmd_defects.simulation import Noise, Optics, simulate
from napari_tmd_defects.runtime import Cancelled, WeightsError, default_weights, save_weights


@pytest.fixture(scope="module")
def sample():
    """A 256 px frame like the built-in sample, with half of its cells defective."""
    return simulate("MoTe2", 256, pixel_size=0.09, defect_fraction=0.5, optics=Optics(source_fwhm_a=0.6),
                    noise=Noise(poisson_lambda=12.0, gaussian_mu=15.0, background=0.08), seed=3)


@pytest.fixture(scope="module")
def shipped():
    return C.load_classifier(device="cpu")


def _tiny_classifier(channels=2, size=16):
    torch.manual_seed(0)
    model = C.build_classifier(channels, size)
    return C.CellClassifier(model, C.make_card(channels, size, "standard"), "cpu")


# --------------------------------------------------------------------------- crops
def test_crop_is_centred_on_integer_pixel_centres():
    # pixel centres sit at integer coordinates: a box of +-0.5 px around pixel (x=10, y=20)
    # must give a crop symmetric about its centre, holding that pixel only
    img = np.zeros((40, 40), np.float32)
    img[20, 10] = 1.0
    crop = C.extract_crops(img, np.array([[9.5, 19.5, 10.5, 20.5]]), size=4, channels=1)[0, 0]
    np.testing.assert_allclose(crop, crop[::-1, ::-1], atol=1e-6)
    np.testing.assert_allclose(crop, crop.T, atol=1e-6)
    assert crop.min() > 0.3
    # boxes moved by +-0.7 px give mirror-image crops (no half-pixel bias)
    right = C.extract_crops(img, np.array([[10.2, 18.0, 11.2, 22.0]]), size=4, channels=1)[0, 0]
    left = C.extract_crops(img, np.array([[8.8, 18.0, 9.8, 22.0]]), size=4, channels=1)[0, 0]
    np.testing.assert_allclose(right, left[:, ::-1], atol=1e-6)
    assert right[:, 0].sum() > 0 and right[:, -1].sum() == 0


def test_two_channel_split_left_is_channel_0():
    img = np.zeros((64, 64), np.float32)
    img[30, 22] = 5.0  # left half of the box below
    box = np.array([[19.5, 24.5, 39.5, 39.5]])
    x2 = C.extract_crops(img, box, size=8, channels=2)
    assert x2.shape == (1, 2, 8, 8)
    assert x2[0, 0].sum() > 0 and x2[0, 1].sum() == 0
    img2 = np.zeros_like(img)
    img2[30, 36] = 5.0  # right half -> channel 1
    x2 = C.extract_crops(img2, box, size=8, channels=2)
    assert x2[0, 1].sum() > 0 and x2[0, 0].sum() == 0
    x1 = C.extract_crops(img, box, size=8, channels=1)
    assert x1.shape == (1, 1, 8, 8) and x1[0, 0, :, :4].sum() > 0 and x1[0, 0, :, 4:].sum() == 0


def test_crops_of_constant_image_keep_its_value_and_empty_boxes():
    img = np.full((50, 60), 0.7, np.float32)
    x = C.extract_crops(img, np.array([[5.2, 6.7, 30.1, 28.9], [10, 10, 12, 11]]), 16, 2)
    np.testing.assert_allclose(x, 0.7, atol=1e-5)
    assert C.extract_crops(img, np.zeros((0, 4)), 16, 2).shape == (0, 2, 16, 16)


@pytest.mark.parametrize("boxes", [np.ones((3, 3)), np.array([[5, 5, 4, 9.0]]), np.array([[0, 0, np.nan, 3]])])
def test_bad_boxes_raise(boxes):
    with pytest.raises(ValueError, match="box"):
        C.extract_crops(np.zeros((20, 20)), boxes)


def test_jitter_boxes_stays_within_fraction():
    b = np.array([[10.0, 20.0, 30.0, 40.0]] * 200)
    j = C.jitter_boxes(b, 0.07, np.random.default_rng(0))
    assert np.all(np.abs(j - b) <= 0.07 * 20 + 1e-9) and np.abs(j - b).max() > 1.0


# --------------------------------------------------------------------------- normalisation
def test_normalisation_invariant_to_gain_and_offset(sample):
    t = sample.truth
    base = C.extract_crops(C.normalize_image(sample.image, t.pixel_size), t.cell_box, 16, 2)
    for gain, offset in ((3.0, 50.0), (0.02, -7.0)):
        other = C.normalize_image(sample.image * gain + offset, t.pixel_size)
        x = C.extract_crops(other, t.cell_box, 16, 2)
        np.testing.assert_allclose(x, base, atol=2e-3)


def test_normalisation_keeps_vacancies_dark(sample):
    t = sample.truth
    x = C.extract_crops(C.normalize_image(sample.image, t.pixel_size), t.cell_box, 16, 2)
    peak = x.max(axis=(2, 3))  # (N, 2): X-column and M-column maxima
    perfect, v_te2, v_mo = (t.cell_label == k for k in (0, 2, 3))
    assert 0.7 < np.median(peak[perfect, 0]) < 3.0  # full X column near the scale of 1
    assert np.median(peak[v_te2, 0]) < 0.5 * np.median(peak[perfect, 0])
    assert np.median(peak[v_mo, 1]) < 0.8 * np.median(peak[perfect, 1])


def test_normalize_image_bad_input():
    with pytest.raises(ValueError, match="2-D"):
        C.normalize_image(np.zeros((3, 4, 5)))
    with pytest.raises(ValueError, match="pixel_size"):
        C.normalize_image(np.zeros((8, 8)), pixel_size=-1)
    assert np.all(C.normalize_image(np.full((16, 16), 3.0)) == 0)  # flat image -> zeros, no NaN
    assert C.normalize_image(np.random.default_rng(0).random((5, 7)), 0.03).shape == (5, 7)  # tiny image


def _whole_frame_normalisation(image, pixel_size=None, material="MoTe2"):
    """normalize_image written out on whole frames (three full-size arrays)."""
    from scipy import ndimage as ndi

    from napari_tmd_defects.lattice.columns import local_background
    from napari_tmd_defects.materials import get_material

    img = np.asarray(image, np.float32)
    smooth = ndi.gaussian_filter(img, 1.0 if pixel_size is None else max(0.7, 0.25 / pixel_size), mode="nearest")
    bg = (np.float32(np.percentile(smooth, 1.0)) if pixel_size is None
          else local_background(smooth, get_material(material).a / pixel_size))
    scale = np.float32(np.percentile(smooth - bg, 99.0))
    return np.clip((img - bg) / scale, -3.0, 5.0)


@pytest.mark.parametrize("keep", [True, False])
def test_normalisation_in_bands_equals_the_whole_frame_one(sample, monkeypatch, keep):
    # bands of 40 rows (the smoothing's reach crosses them), background kept or recomputed
    monkeypatch.setattr(C, "_NORM_BAND_ROWS", 40)
    monkeypatch.setattr(C, "_KEEP_BACKGROUND_BYTES", 2**40 if keep else 0)
    img, ps = sample.image[:, :250], sample.truth.pixel_size
    counts = np.round(img / img.max() * 4000 + 100).astype(np.uint16)
    for image, p in ((img, ps), (counts, ps), (img, None), (img, 0.4)):  # 0.4 Å/px: background at full resolution
        np.testing.assert_array_equal(C.normalize_image(image, p), _whole_frame_normalisation(image, p))
    hot = img.astype(np.float64)
    hot[5, 7], hot[9, 9] = np.nan, np.inf  # non-finite pixels read as the median
    fixed = np.where(np.isfinite(hot), hot, np.median(hot[np.isfinite(hot)]))
    np.testing.assert_array_equal(C.normalize_image(hot, ps), _whole_frame_normalisation(fixed, ps))


@pytest.mark.parametrize("q", [99.0, 99.5, 50.0, 100.0])
def test_high_percentile_fed_in_bands_is_numpys(q):
    rng = np.random.default_rng(2)
    for x in (rng.normal(size=(300, 700)), rng.integers(0, 40, (300, 700)).astype(float),  # ties
              np.sort(rng.exponential(size=210_000)).reshape(300, 700), rng.random((1, 3))):
        x = x.astype(np.float32)
        for rows in (1, 13, 300):
            top = C._HighPercentile(x.size, q)
            for r in range(0, len(x), rows):
                top.add(x[r:r + rows])
            got, want = top.value(), np.percentile(x, q)
            assert got == want and got.dtype == want.dtype, (q, rows, got, want)
            assert top.n_kept <= 2 * top.need + (1 << 16) + rows * x.shape[1]  # the top values and a band
    x[0, 1] = np.nan
    top = C._HighPercentile(x.size, q)
    top.add(x)
    assert np.isnan(top.value())


def test_normalisation_holds_one_full_size_array(monkeypatch):
    import tracemalloc

    monkeypatch.setattr(C, "_KEEP_BACKGROUND_BYTES", 0)  # as for a large frame ...
    monkeypatch.setattr(C, "_NORM_BAND_ROWS", 64)  # ... in many bands
    sim = simulate("MoTe2", 160, pixel_size=0.1, noise=Noise(None, 0), seed=4)
    counts = np.tile(np.round(sim.image / sim.image.max() * 4000).astype(np.uint16), (6, 6))  # 960² px
    C.normalize_image(counts[:64, :64], 0.1)
    tracemalloc.start()
    try:
        out = C.normalize_image(counts, 0.1)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert out.dtype == np.float32
    # the output plus bands (a whole-frame version holds >= 3 float32 copies of the frame)
    assert peak < 1.5 * out.nbytes, f"peak {peak / 2**20:.1f} MiB for a {out.nbytes / 2**20:.1f} MiB frame"


def _frame_crops_per_cell(img, frames, box, size, channels):
    """Frame crops written out: each cell's own sampling grid, one grid_sample per cell."""
    import torch.nn.functional as F

    h, w = img.shape
    fr = np.asarray(frames, np.float64)
    x0, y0, x1, y1 = box
    halves = [(x0, x1)] if channels == 1 else [(x0, 0.5 * (x0 + x1)), (0.5 * (x0 + x1), x1)]
    kx, ky = C._frame_samples(fr, box, size, channels)
    tx = (np.arange(size * kx) + 0.5) / (size * kx)
    ty = (np.arange(size * ky) + 0.5) / (size * ky)
    t = torch.from_numpy(np.asarray(img, np.float32))[None, None]
    out = []
    for f in fr:
        chans = []
        for lo, hi in halves:
            vv, uu = np.meshgrid(y0 + ty * (y1 - y0), lo + tx * (hi - lo), indexing="ij")
            px = f[:, :2] @ np.stack([uu.ravel(), vv.ravel()]) + f[:, 2:]
            g = np.stack([(px[0] + 0.5) / w * 2 - 1, (px[1] + 0.5) / h * 2 - 1], -1).reshape(1, size * ky, size * kx, 2)
            smp = F.grid_sample(t, torch.from_numpy(g).float(), mode="bilinear", padding_mode="zeros", align_corners=False)
            chans.append(F.avg_pool2d(smp, (ky, kx))[0, 0].numpy())
        out.append(np.stack(chans))
    return np.stack(out)


@pytest.mark.parametrize("scale, size, channels", [(1.0, 16, 2), (3.0, 8, 2), (2.0, 8, 1)])
def test_frame_crops_of_all_cells_at_once_equal_per_cell_crops(scale, size, channels):
    rng = np.random.default_rng(5)
    img = rng.random((90, 120)).astype(np.float32)
    n = 7
    th = rng.uniform(0, 2 * np.pi, n)
    rot = np.stack([np.stack([np.cos(th), -np.sin(th)], 1), np.stack([np.sin(th), np.cos(th)], 1)], 1)
    lin = scale * 20.0 * rot @ np.array([[1.0, 0.15], [0.0, 0.9]])  # turned, sheared cells of ~20 px
    t = np.stack([rng.uniform(-5, 125, n), rng.uniform(-5, 95, n)], 1)  # some reach past the edges
    frames = np.concatenate([lin, t[:, :, None]], 2)
    box = (-0.2, -0.6, 0.7, 0.3)
    got = C.extract_frame_crops(img, frames, box, size, channels)
    assert got.shape == (n, channels, size, size)
    np.testing.assert_allclose(got, _frame_crops_per_cell(img, frames, box, size, channels), atol=1e-6)


def test_streamed_frame_writes_bands_on_request_and_gives_them_back(sample, monkeypatch):
    monkeypatch.setattr(C, "_NORM_BAND_ROWS", 32)
    img, ps = sample.image[:200, :128], sample.truth.pixel_size  # 512 B a row: a band is 4 pages
    whole = C.normalize_image(img, ps)
    s = C._StreamedFrame(C._Normalizer(img, ps))
    try:
        assert s.tensor.shape == (1, 1, 200, 128)
        s.need(40, 70)  # bands 1 and 2
        assert s._written.tolist() == [False, True, True, False, False, False, False]
        np.testing.assert_array_equal(s.array[32:96], whole[32:96])
        s.need(150, 200)  # bands 1-3 are read no more; 4-6 written
        assert s._written.tolist() == [False, False, False, False, True, True, True]
        np.testing.assert_array_equal(s.array[128:], whole[128:])
        if s._mm is not None:  # pages handed back read as zeros
            assert not s.array[32:96].any()
    finally:
        s.close()


@pytest.mark.parametrize("frames", [False, True])
def test_streamed_prediction_equals_the_whole_frame_one(sample, monkeypatch, frames):
    """Probabilities from the frame streamed band by band are bitwise those from the whole
    normalised frame, whatever the cells' order; only a few bands are written at once."""
    from napari_tmd_defects.sites import CANONICAL_BOX

    monkeypatch.setattr(C, "_NORM_BAND_ROWS", 24)
    clf = _tiny_classifier()
    clf.batch_size = 10
    t = sample.truth
    order = np.argsort(t.cell_box[:, 1] + 0.01 * t.cell_box[:, 0])  # by row
    boxes = t.cell_box[order]
    a = (t.cell_box[:, 2] - t.cell_box[:, 0]).mean() / (CANONICAL_BOX[2] - CANONICAL_BOX[0])
    fr = np.zeros((len(boxes), 2, 3))  # cells as frames: the boxes' scale, X column at their centres
    fr[:, 0, 0] = fr[:, 1, 1] = a
    fr[:, :, 2] = 0.5 * (boxes[:, :2] + boxes[:, 2:])
    kw = dict(frames=fr) if frames else {}
    written = []

    class Whole(C._StreamedFrame):
        def need(self, r0, r1):  # every band, none given back
            super().need(0, self.array.shape[0])

    class Counted(C._StreamedFrame):
        def need(self, r0, r1):
            super().need(r0, r1)
            written.append(int(self._written.sum()))

    monkeypatch.setattr(C, "_StreamedFrame", Whole)
    ref = clf.predict(sample.image, boxes, t.pixel_size, **kw)
    monkeypatch.setattr(C, "_StreamedFrame", Counted)
    np.testing.assert_array_equal(clf.predict(sample.image, boxes, t.pixel_size, **kw), ref)
    assert max(written) <= 6 < -(-sample.image.shape[0] // 24)  # a few of the frame's 11 bands at once
    shuffled = np.random.default_rng(1).permutation(len(boxes))  # any order: bands kept while read
    kw = dict(frames=fr[shuffled]) if frames else {}
    # other batches: float32 convolutions may differ in the last bits with the batch's composition
    np.testing.assert_allclose(clf.predict(sample.image, boxes[shuffled], t.pixel_size, **kw), ref[shuffled],
                               rtol=1e-5, atol=1e-6)


# --------------------------------------------------------------------------- model
@pytest.mark.parametrize("channels", [1, 2])
def test_builder(channels):
    m = C.build_classifier(channels, 32).eval()
    assert m.conv1.in_channels == channels
    with torch.inference_mode():
        assert m(torch.zeros(3, channels, 32, 32)).shape == (3, 6)
    with pytest.raises(ValueError):
        C.build_classifier(3, 32)


def test_predict_shapes_and_probabilities(sample):
    clf = _tiny_classifier()
    t = sample.truth
    seen = []
    p = clf.predict(sample.image, t.cell_box, t.pixel_size, progress=lambda d, n: seen.append((d, n)))
    assert p.shape == (t.n_cells, 6) and p.dtype == np.float32
    np.testing.assert_allclose(p.sum(1), 1.0, atol=1e-5)
    assert seen[-1] == (t.n_cells, t.n_cells)
    assert clf.predict(sample.image, np.zeros((0, 4)), t.pixel_size).shape == (0, 6)
    with pytest.raises(ValueError, match="trained for MoTe2"):
        clf.predict(sample.image, t.cell_box, t.pixel_size, material="MoS2")
    with pytest.raises(ValueError, match="pixel_size"):
        clf.predict(sample.image, t.cell_box, 0.0)
    with pytest.raises(Cancelled):
        clf.predict(sample.image, t.cell_box, t.pixel_size, cancel=lambda: True)


def test_shipped_weights_classify_sample(shipped):
    sim = sample_image(seed=0)  # the built-in sample (512 px, 0.09 Å/px)
    t = sim.truth
    assert shipped.card["in_channels"] == 2 and shipped.card["material"] == "MoTe2"
    p = shipped.predict(sim.image, t.cell_box, t.pixel_size)
    acc = (p.argmax(1) == t.cell_label).mean()
    assert acc >= 0.95, f"shipped classifier: {acc:.3f} on the built-in sample"
    defect = t.cell_label > 0
    assert (p.argmax(1)[defect] == t.cell_label[defect]).mean() >= 0.9


def test_corrupt_or_missing_weights_name_the_file(tmp_path):
    bad = tmp_path / "broken.pt"
    bad.write_bytes(b"not a torch file")
    with pytest.raises(WeightsError, match="broken.pt"):
        C.load_classifier(bad, device="cpu")
    with pytest.raises(WeightsError, match="missing.pt"):
        C.load_classifier(tmp_path / "missing.pt", device="cpu")
    other = tmp_path / "other.pt"
    save_weights(other, {"w": torch.zeros(3)}, {"in_channels": 2, "input_size": 32})
    with pytest.raises(WeightsError, match="other.pt"):
        C.load_classifier(other, device="cpu")
    assert default_weights("classifier").exists()


def test_weights_roundtrip(tmp_path, sample):
    clf = _tiny_classifier(1, 16)
    path = C.save_classifier(tmp_path / "c.pt", clf.model, clf.card)
    again = C.load_classifier(path, device="cpu")
    t = sample.truth
    p1 = clf.predict(sample.image, t.cell_box[:20], t.pixel_size)
    p2 = again.predict(sample.image, t.cell_box[:20], t.pixel_size)
    np.testing.assert_allclose(p1, p2, atol=2e-2)  # float16 storage


# --------------------------------------------------------------------------- training
def test_simulate_crops_balanced_and_variants():
    sets = C.simulate_crops(6, [(16, 2), (16, 1)], seed=5, pixel_size=(0.1, 0.15), field_a=(30, 35))
    a, b = sets[(16, 2)], sets[(16, 1)]
    assert a.x.shape == (36, 2, 16, 16) and b.x.shape == (36, 1, 16, 16)
    assert a.x.dtype == np.float16
    assert np.array_equal(a.counts, [6] * 6) and np.array_equal(a.y, b.y)


def test_simulate_crops_contrast_matched_to_mote2():
    mos2 = C.simulate_crops(6, [(16, 2)], seed=5, pixel_size=(0.1, 0.15), field_a=(30, 35), material="MoS2",
                            match_to="MoTe2", presets=("paper",))[(16, 2)]
    assert np.array_equal(mos2.counts, [6] * 6) and mos2.meta["matched_to"] == "MoTe2"
    x = mos2.x.astype(np.float32)
    perfect = x[mos2.y == 0]
    # as in MoTe2: the X half (channel 0) brighter than the M half (channel 1) in a perfect cell
    assert perfect[:, 0].max(axis=(1, 2)).mean() > perfect[:, 1].max(axis=(1, 2)).mean()


def test_tiny_training_reduces_loss(tmp_path):
    sets = C.simulate_crops(24, [(16, 2)], seed=1, pixel_size=(0.1, 0.15), field_a=(30, 40))
    train = sets[(16, 2)]
    path = train.save(tmp_path / "crops.npz")
    train = C.CropSet.load(path)
    model, hist = C.train_classifier(train, train, steps=30, batch_size=32, lr=3e-3, eval_every=10,
                                     checkpoint=tmp_path / "ck.pt", checkpoint_every=10, log=None)
    assert hist["loss"][-1] < 0.8 * hist["loss"][0]
    assert (tmp_path / "ck.pt").exists() and hist["steps_done"] == 30


def test_corrections_both_layouts(tmp_path, sample):
    t = sample.truth
    # boxes on images
    (tmp_path / "a").mkdir()
    write_tiff(tmp_path / "a" / "img.tif", sample.image, t.pixel_size)
    names = ("Perfect", "V_Te1", "V_Te2", "V_Mo", "V_Te1+V_Mo", "V_Te2+V_Mo")
    with (tmp_path / "a" / "index.csv").open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["image", "x_min", "y_min", "x_max", "y_max", "label"])
        for b, lab in zip(t.cell_box[:5], t.cell_label[:5]):
            w.writerow(["img.tif", *b, names[lab]])
    sets = C.crops_from_corrections(tmp_path / "a", [(16, 2)], repeats=2, jitter=0.05)
    assert sets[(16, 2)].x.shape == (10, 2, 16, 16)
    assert list(sets[(16, 2)].y[:5]) == list(t.cell_label[:5])
    # single crops cut from the normalised image
    (tmp_path / "b" / "crops").mkdir(parents=True)
    norm = C.normalize_image(sample.image, t.pixel_size)
    x0, y0, x1, y1 = np.round(t.cell_box[0]).astype(int)
    np.save(tmp_path / "b" / "crops" / "c0.npy", norm[y0:y1, x0:x1])
    (tmp_path / "b" / "index.csv").write_text("crop,label\nc0.npy,vx2\n")
    sets = C.crops_from_corrections(tmp_path / "b", [(16, 2)])
    assert sets[(16, 2)].y.tolist() == [2]
    (tmp_path / "b" / "index.csv").write_text("crop,label\nc0.npy,V_Xx\n")
    with pytest.raises(ValueError, match="row 2"):
        C.crops_from_corrections(tmp_path / "b")
    with pytest.raises(FileNotFoundError, match="index.csv"):
        C.crops_from_corrections(tmp_path / "missing")


def test_confusion_matrix_and_summary(tmp_path):
    cm = C.confusion_matrix([0, 0, 1, 2, 2, 2], [0, 1, 1, 2, 2, 0], 3)
    assert cm.tolist() == [[1, 1, 0], [0, 1, 0], [1, 0, 2]]
    s = C.accuracy_summary(cm, ["a", "b", "c"])
    assert s["overall"] == pytest.approx(4 / 6) and s["per_class"]["c"] == pytest.approx(2 / 3)
    assert C.save_confusion_png(cm, ["a", "b", "c"], tmp_path / "cm.png").stat().st_size > 1000


# --------------------------------------------------------------------------- CLI
def test_cli_train_and_evaluate(tmp_path):
    data = tmp_path / "data"
    generate_dataset(data, n=2, size=96, seed=4, pixel_size=0.12, defect_fraction=0.5, n_preview=0)
    out = tmp_path / "w" / "clf.pt"
    rc = main(["train-classifier", "--out", str(out), "--n-per-class", "0", "--data", str(data),
               "--data-repeats", "1", "--val-data", str(data), "--steps", "3", "--batch-size", "8",
               "--init", str(default_weights("classifier"))])
    assert rc == 0
    for suffix in (".pt", ".json", ".ckpt"):
        assert out.with_suffix(suffix).exists()
    assert (tmp_path / "w" / "clf_confusion.png").exists()
    report = tmp_path / "r" / "eval.md"
    rc = main(["evaluate-classifier", "--weights", str(out), "--data", str(data), "--report", str(report),
               "--jitter", "0", "0.05", "--update-card"])
    assert rc == 0
    card = C.load_classifier(out, device="cpu").card
    assert card["scores"]["data, box jitter 0.05"]["n"] > 0 and "validation" in card["scores"]
    text = report.read_text()
    assert "| dataset |" in text and "V_Te2+V_Mo" in text and "Images with errors" in text
    assert (tmp_path / "r" / "img" / "eval_data_j5.png").exists()


def test_cli_distils_a_small_classifier(tmp_path, one_thread):
    data = tmp_path / "data"
    generate_dataset(data, n=1, size=96, seed=4, pixel_size=0.12, defect_fraction=0.5, n_preview=0)
    out = tmp_path / "s.pt"
    rc = main(["train-classifier", "--out", str(out), "--arch", "small", "--teacher", str(default_weights("classifier")),
               "--distill-temperature", "3", "--n-per-class", "0", "--data", str(data), "--data-repeats", "1",
               "--val-data", str(data), "--steps", "3", "--batch-size", "8"])
    assert rc == 0
    clf = C.load_classifier(out, device="cpu")
    assert clf.card["model"] == "small" and isinstance(clf.model, torch.nn.Sequential)
    tr = clf.card["training"]
    assert "--arch small" in tr["command"] and tr["teacher"]["model"] == "resnet18"
    assert "distillation" in tr["loss"] and "T = 3.0" in tr["loss"]


def test_cli_train_errors_are_one_line(tmp_path, capsys):
    rc = main(["train-classifier", "--out", str(tmp_path / "x.pt"), "--n-per-class", "0"])
    assert rc == 1
    assert "no training data" in capsys.readouterr().err


def test_frame_crops_equal_box_crops_at_rotation_0_and_follow_a_turned_lattice():
    from napari_tmd_defects.classification import extract_crops, extract_frame_crops, normalize_image
    from napari_tmd_defects.lattice.cells import cell_frames
    from napari_tmd_defects.simulation import Noise, simulate
    from napari_tmd_defects.sites import CANONICAL_HOLLOW, CANONICAL_PARTNER

    def frames(t):
        n = t.n_cells
        th = np.radians(t.rotation_deg)
        r = np.array([[np.cos(th), np.sin(th)], [-np.sin(th), np.cos(th)]])
        p = np.tile(r @ CANONICAL_PARTNER * t.a_px, (n, 1))
        h = np.tile(r @ CANONICAL_HOLLOW * t.a_px, (n, 1))
        return cell_frames(t.cell_x_site, t.cell_m_site, p, h)

    for ps in (0.08, 0.03):
        sim = simulate("MoTe2", 320, pixel_size=ps, noise=Noise(None, 0), seed=1)
        img = normalize_image(sim.image, ps)
        a = extract_crops(img, sim.truth.cell_box)
        b = extract_frame_crops(img, frames(sim.truth))
        assert np.abs(a - b).max() < 1e-3
    # the same cells in a lattice turned by 40°: the frame crops look canonical again
    plain = simulate("MoTe2", 320, pixel_size=0.1, defect_fraction=0.0, noise=Noise(None, 0), seed=2)
    turned = simulate("MoTe2", 320, pixel_size=0.1, rotation_deg=40, defect_fraction=0.0, noise=Noise(None, 0), seed=2)
    ca = extract_frame_crops(normalize_image(plain.image, 0.1), frames(plain.truth)).mean(axis=0)
    cb = extract_frame_crops(normalize_image(turned.image, 0.1), frames(turned.truth)).mean(axis=0)
    assert np.corrcoef(ca.ravel(), cb.ravel())[0, 1] > 0.98
    with pytest.raises(ValueError, match="NaN"):
        extract_frame_crops(np.zeros((50, 50)), np.full((1, 2, 3), np.nan))


def test_compiled_classifier_gives_the_eager_probabilities(shipped, monkeypatch):
    from napari_tmd_defects import runtime

    sim = sample_image(seed=0)
    t = sim.truth
    assert shipped._inference_model() is not shipped.model  # compiled on the CPU
    p1 = shipped.predict(sim.image, t.cell_box, t.pixel_size)
    monkeypatch.setattr(runtime, "OPTIMIZE_CPU_INFERENCE", False)
    eager = C.CellClassifier(shipped.model, shipped.card, "cpu")
    assert eager._inference_model() is eager.model
    p0 = eager.predict(sim.image, t.cell_box, t.pixel_size)
    np.testing.assert_allclose(p1, p0, atol=1e-4)
    assert np.array_equal(p1.argmax(1), p0.argmax(1))


@pytest.mark.parametrize("stem,size,n_dense", [("standard", 32, 3), ("standard", 16, 5), ("small", 32, 0)])
def test_small_input_resnet_is_the_same_function(stem, size, n_dense):
    torch.manual_seed(1)
    model = C.build_classifier(2, size, stem=stem).eval()
    for m in model.modules():  # non-trivial batch-norm statistics
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 1.5)
    small = C._small_input_resnet(model, 2, size)
    if n_dense == 0:  # no block on <= 2 x 2 px: nothing to rewrite
        assert small is None
        return
    assert len(small.dense) == n_dense
    x = torch.randn(5, 2, size, size)
    with torch.inference_mode():
        torch.testing.assert_close(small(x), model(x), rtol=1e-4, atol=1e-5)


# --------------------------------------------------------------------------- small network
def test_small_arch_builds_runs_and_costs_a_tenth(tmp_path, sample):
    torch.manual_seed(0)
    small = C.build_classifier(2, 32, arch="small").eval()
    with torch.inference_mode():
        out = small(torch.randn(7, 2, 32, 32))
    assert out.shape == (7, 6) and torch.isfinite(out).all()
    ratio = C.classifier_macs(C.build_classifier(2, 32)) / C.classifier_macs(small)
    assert 10 <= ratio <= 20
    with pytest.raises(ValueError, match="arch"):
        C.build_classifier(2, 32, arch="vgg")
    # card round trip: the loader rebuilds the small network from the card's "model"
    card = C.make_card(2, 32, "standard", arch="small")
    assert card["model"] == "small"
    path = C.save_classifier(tmp_path / "s.pt", small, card)
    again = C.load_classifier(path, device="cpu")
    assert isinstance(again.model, torch.nn.Sequential)
    t = sample.truth
    p_eager = C.CellClassifier(small, card, "cpu")
    p1 = again.predict(sample.image, t.cell_box[:30], t.pixel_size)  # compiled on the CPU
    p0 = p_eager.model(torch.from_numpy(C.extract_crops(C.normalize_image(sample.image, t.pixel_size),
                                                         t.cell_box[:30]))).softmax(1).detach().numpy()
    np.testing.assert_allclose(p1, p0, atol=2e-2)  # float16 storage
    # a card with other widths loads those widths
    spec = [[8, 3, 2], [16, 3, 2]]
    narrow = C.build_classifier(2, 32, arch="small", small_layers=spec)
    C.save_classifier(tmp_path / "n.pt", narrow, dict(card, small_layers=spec))
    assert C.classifier_macs(C.load_classifier(tmp_path / "n.pt", device="cpu").model) == C.classifier_macs(narrow)


@pytest.fixture
def one_thread():
    """Tiny networks train fastest on one thread (no waiting on busy cores)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def test_distillation_follows_the_teacher(one_thread):
    # the teacher's rule (class = brightest of six pixels) against useless true labels: with
    # alpha = 1 the student learns the teacher's classes, not the labels
    rng = np.random.default_rng(0)
    n = 192
    x = rng.normal(0.0, 0.1, (n, 2, 16, 16)).astype(np.float16)
    cls = rng.integers(0, 6, n)
    x[np.arange(n), 0, 2 + 2 * cls, 8] = 3.0

    class Teacher(torch.nn.Module):
        def forward(self, xb):
            return 4.0 * xb[:, 0, 2::2, 8][:, :6]

    train = C.CropSet(x, np.zeros(n, np.int64))  # every true label says "Perfect"
    model, _ = C.train_classifier(train, None, arch="small", teacher=Teacher(), distill_alpha=1.0,
                                  steps=40, batch_size=32, lr=5e-3, log=None, augment=False)
    pred = C.predict_crops(model, x.astype(np.float32)).argmax(1)
    assert (pred == cls).mean() > 0.6


def test_shipped_small_classifier_loads_by_name_and_agrees_on_a_frame():
    """``load_classifier("small")`` is the shipped distilled network: a small model whose
    card says how it was trained, and whose classes on a simulated frame are the truth's."""
    from napari_tmd_defects import analyze
    from napari_tmd_defects.classification import classifier_macs, load_classifier
    from napari_tmd_defects.simulation import Noise, simulate

    small = load_classifier("small", device="cpu")
    big = load_classifier(None, device="cpu")
    assert small.card["model"] == "small" and "--arch small" in small.card["training"]["command"]
    assert classifier_macs(small.model) * 10 < classifier_macs(big.model)
    sim = simulate("MoTe2", 320, pixel_size=0.1, defect_fraction=0.15, noise=Noise(20, 5), seed=31)
    a = analyze(sim.image, 0.1, classifier=small)
    b = analyze(sim.image, 0.1, classifier=big)
    ok = (a.labels >= 0) & (b.labels >= 0)
    assert ok.sum() > 50 and np.mean(a.labels[ok] == b.labels[ok]) >= 0.98


def test_normalisation_on_several_threads_equals_one_threads(sample, monkeypatch, array_threads):
    monkeypatch.setattr(C, "_NORM_BAND_ROWS", 40)  # several bands
    img, ps = sample.image, sample.truth.pixel_size
    array_threads(1)
    one = C.normalize_image(img, ps)
    array_threads(3)
    np.testing.assert_array_equal(C.normalize_image(img, ps), one)
