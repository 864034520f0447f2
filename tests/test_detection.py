import json

import numpy as np
import pytest
import torch

from napari_tmd_defects import detection as det
from napari_tmd_defects.datasets import generate_dataset, sample_image
from napari_tmd_defects.geometry import cells_from_hexagons, match_boxes
from napari_tmd_defects.runtime import WeightsError, default_weights
from napari_tmd_defects.simulation import Noise, apply_noise

SHIPPED = default_weights("detector")
needs_weights = pytest.mark.skipif(not SHIPPED.exists(), reason="shipped detector weights not present")


@pytest.fixture(scope="module")
def slim():
    torch.manual_seed(0)
    return det.build_detector("slim")


@pytest.fixture(scope="module")
def shipped():
    if not SHIPPED.exists():
        pytest.skip("shipped detector weights not present")
    return det.load_detector(device="cpu")


# --------------------------------------------------------------------------- builder
def test_slim_builder_shapes_and_size(slim):
    n = det.count_parameters(slim)
    assert n["total"] < 2_000_000  # compact shipped weights (~3 MB as float16)
    assert n["box_head"] < 1_000_000
    assert slim.backbone.out_channels == 64
    feats = slim.backbone(torch.zeros(1, 1, 128, 96))
    assert feats.shape == (1, 64, 16, 12)  # stride 8
    gen = slim.rpn.anchor_generator
    assert gen.sizes == ((8, 16, 32, 64, 128),) and gen.aspect_ratios == ((0.5, 1.0, 2.0),)
    assert slim.rpn.head.cls_logits.out_channels == 15
    assert slim.roi_heads.detections_per_img == 800
    # the transform normalises but never resizes (torchvision's default resizes to 800 px)
    imgs, _ = slim.transform([torch.zeros(1, 200, 300)])
    assert imgs.image_sizes == [(200, 300)]


def test_paper_builder_is_full_mobilenet():
    # parameter count of the paper configuration, without allocating it twice
    m = det.build_detector("paper")
    n = det.count_parameters(m)
    assert m.backbone.out_channels == 1280
    assert n["box_head"] > 60_000_000
    del m


def test_builder_rejects_unknown_settings():
    with pytest.raises(ValueError, match="config"):
        det.build_detector("huge")
    with pytest.raises(ValueError, match="settings"):
        det.build_detector("slim", depth=3)
    with pytest.raises(ValueError, match="target"):
        det.build_detector("slim", target="atom")


def test_forward_train_and_eval(slim):
    img = torch.rand(1, 128, 128)
    boxes = torch.tensor([[10.0, 10.0, 52.0, 61.0], [60.0, 40.0, 102.0, 91.0]])
    slim.train()
    losses = slim([img, img.clone()], [{"boxes": boxes, "labels": torch.ones(2, dtype=torch.int64)},
                                        {"boxes": torch.zeros((0, 4)), "labels": torch.zeros(0, dtype=torch.int64)}])
    assert set(losses) == {"loss_classifier", "loss_box_reg", "loss_objectness", "loss_rpn_box_reg"}
    assert all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    slim.eval()
    with torch.no_grad():
        out = slim([img])
    assert out[0]["boxes"].shape[1] == 4 and len(out[0]["scores"]) == len(out[0]["boxes"])


# --------------------------------------------------------------------------- preprocessing
def test_canonical_scale_and_coordinates():
    assert det.canonical_scale(0.12) == pytest.approx(1.0, abs=1e-3)  # MoTe2 a = 3.52 Å
    assert det.canonical_scale(0.03) == pytest.approx(0.25, abs=1e-3)
    with pytest.raises(ValueError, match="pixel_size"):
        det.canonical_scale(0.0)
    b = np.array([[10.0, 20.0, 50.0, 70.0]])
    s = (0.25, 0.25)
    assert np.allclose(det._from_canonical(det._to_canonical(b, s), s), b)
    # a point at pixel centre k of the original maps onto the matching resampled position
    img = np.zeros((400, 400), np.float32)
    img[201, 99] = 1.0
    can, sxy = det._resample(img, 0.25)
    y, x = np.unravel_index(np.argmax(can), can.shape)
    p = det._to_canonical(np.array([[99.0, 201.0, 99.0, 201.0]]), sxy)[0]
    assert abs(x - p[0]) <= 0.5 and abs(y - p[1]) <= 0.5


def test_prepare_image_normalises_and_handles_bad_pixels():
    sim = sample_image(size=128)
    a, _ = det.prepare_image(sim.image, 0.09)
    b, _ = det.prepare_image(sim.image * 7.0 + 1000.0, 0.09)  # dose and offset do not matter
    assert np.allclose(a, b, atol=1e-4)
    assert a.shape == (96, 96)
    bad = sim.image.copy()
    bad[5:9, 5:9] = np.nan
    c, _ = det.prepare_image(bad, 0.09)
    assert np.isfinite(c).all()
    assert det.prepare_image(np.full((100, 100), 3.0), 0.1)[0] is None
    with pytest.raises(ValueError, match="finite"):
        det.prepare_image(np.full((100, 100), np.nan), 0.1)
    with pytest.raises(ValueError, match="2-D"):
        det.prepare_image(np.zeros((3, 100, 100)), 0.1)


def test_training_images_and_crops(rng):
    img, boxes = det.random_training_image(rng, size=200, presets=("paper",), pixel_size=(0.1, 0.12))
    assert img.dtype == np.float32 and abs(img.shape[0] - 200) <= 1
    assert len(boxes) > 10
    w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    # hexagon boxes ~42 x 51 px at the canonical sampling (±10 % scale jitter)
    assert np.all((w > 35) & (w < 48) & (h > 44) & (h < 58))
    crop, cb = det._random_crop(img, boxes, 128, rng, margin=0, hflip=True)
    assert crop.shape == (128, 128) and len(cb) > 0
    assert np.all(det._visible_fraction(cb, 128, 128) >= 0.7)
    _, cells = det.random_training_image(rng, size=200, target="cell", presets=("paper",))
    assert np.median(cells[:, 2] - cells[:, 0]) < np.median(w)


# --------------------------------------------------------------------------- weights
def test_missing_and_corrupt_weights_name_the_file(tmp_path, capsys):
    with pytest.raises(WeightsError, match="nope.pt"):
        det.load_detector(tmp_path / "nope.pt")
    bad = tmp_path / "broken.pt"
    bad.write_bytes(b"not a torch file")
    with pytest.raises(WeightsError, match="broken.pt"):
        det.load_detector(bad)
    from napari_tmd_defects.cli import main

    generate_dataset(tmp_path / "d", n=1, size=64, seed=1)
    assert main(["evaluate-detector", "--data", str(tmp_path / "d"), "--weights", str(bad),
                 "--report", str(tmp_path / "r.md")]) == 1
    assert "broken.pt" in capsys.readouterr().err


def test_train_command_writes_weights_card_checkpoint_and_resumes(tmp_path, capsys):
    from napari_tmd_defects.cli import main

    val = tmp_path / "val"
    generate_dataset(val, n=1, size=96, seed=5, pixel_size=0.12)
    out = tmp_path / "w" / "det.pt"
    args = ["train-detector", "--out", str(out), "--val", str(val), "--epochs", "1",
            "--steps-per-epoch", "2", "--crop", "128", "--threads", "1", "--device", "cpu"]
    assert main(args) == 0
    card = json.loads(out.with_suffix(".json").read_text())
    assert card["training"]["steps"] == 2 and card["a_px"] == det.A_PX
    assert card["validation"][0]["epoch"] == 1 and "recall" in card["validation"][0]
    assert out.with_name("det.pt.ckpt").exists()
    loaded = det.load_detector(out, device="cpu")
    assert loaded.card["config"]["stride"] == 8
    # resume continues from the checkpoint to the new number of epochs
    assert main(args[:6] + ["2"] + args[7:] + ["--resume"]) == 0
    assert json.loads(out.with_suffix(".json").read_text())["training"]["steps"] == 4
    assert "resumed" in capsys.readouterr().out
    # the evaluation command runs end to end (the tiny model finds little; only the report matters)
    report = tmp_path / "report.md"
    assert main(["evaluate-detector", "--data", str(val), "--weights", str(out), "--direct-weights", str(out),
                 "--report", str(report), "--threads", "1", "--device", "cpu"]) == 0
    text = report.read_text()
    assert "α \\ β" in text and "direct unit-cell detection" in text and "DATA/val" in text
    assert "/tmp" not in text.split("## Method")[0].replace(str(tmp_path), "")
    res = json.loads(report.with_suffix(".json").read_text())
    assert len(res["datasets"][0]["grid_mean_iou"]) == 4


def test_detector_rejects_bad_input_with_untrained_model(slim):
    d = det.HexagonDetector(slim, {}, "cpu")
    with pytest.raises(ValueError, match="64 px"):
        d.detect(np.zeros((40, 300)), 0.1)
    with pytest.raises(ValueError, match="pixel_size"):
        d.detect(np.zeros((100, 100)), -1.0)
    with pytest.raises(ValueError, match="finite"):
        d.detect(np.full((100, 100), np.nan), 0.1)
    boxes, scores = d.detect(np.full((100, 100), 7.0), 0.1)  # constant: nothing to find
    assert boxes.shape == (0, 4) and scores.shape == (0,)


# --------------------------------------------------------------------------- shipped model
@needs_weights
def test_shipped_detector_finds_the_sample_cells(shipped):
    sim = sample_image(seed=0)
    t = sim.truth
    boxes, scores = shipped.detect(sim.image, t.pixel_size)
    cells = cells_from_hexagons(boxes, scores, t.shape, t.a_px)
    m = match_boxes(cells.boxes, t.cell_box, 0.5)
    assert (m["truth_match"] >= 0).mean() >= 0.99
    assert (m["pred_match"] >= 0).mean() >= 0.99
    assert not m["duplicate"].any()


@needs_weights
def test_shipped_detector_tiles_large_images(shipped):
    # 1200² px at 0.09 Å/px is 900² px at the detector's sampling: four overlapping tiles
    sim = sample_image(seed=1, size=1200)
    t = sim.truth
    calls = []
    boxes, scores = shipped.detect(sim.image, t.pixel_size, progress=lambda d, n: calls.append((d, n)))
    assert calls[-1] == (4, 4)
    cells = cells_from_hexagons(boxes, scores, t.shape, t.a_px)
    m = match_boxes(cells.boxes, t.cell_box, 0.5)
    assert (m["truth_match"] >= 0).mean() >= 0.99
    assert not m["duplicate"].any()
    # hexagons are not reported twice where tiles overlap
    hm = match_boxes(boxes, t.hex_box, 0.5)
    assert hm["duplicate"].sum() == 0


@needs_weights
def test_shipped_detector_on_images_without_lattice(shipped, rng):
    noise = apply_noise(np.zeros((256, 256)), Noise(poisson_lambda=10, gaussian_mu=20, background=0.3), rng)
    boxes, _ = shipped.detect(noise, 0.1)
    cells = cells_from_hexagons(boxes, None, noise.shape, 3.52 / 0.1)
    assert len(boxes) <= 2 and len(cells) <= 4
    boxes, _ = shipped.detect(rng.uniform(0, 255, (128, 128)), 0.1)
    assert len(boxes) <= 2


@needs_weights
def test_shipped_detector_cancel(shipped):
    from napari_tmd_defects.runtime import Cancelled

    with pytest.raises(Cancelled):
        shipped.detect(sample_image(size=128).image, 0.09, cancel=lambda: True)


@needs_weights
def test_compiled_backbone_finds_the_same_hexagons_as_the_eager_model(shipped, monkeypatch):
    from napari_tmd_defects import runtime

    sim = sample_image(seed=0)
    fast = det.HexagonDetector(shipped.model, shipped.card, "cpu")
    assert fast._fast_backbone() is not None  # compiled on the CPU
    b1, s1 = fast.detect(sim.image, sim.truth.pixel_size)
    monkeypatch.setattr(runtime, "OPTIMIZE_CPU_INFERENCE", False)
    eager = det.HexagonDetector(shipped.model, shipped.card, "cpu")
    assert eager._fast_backbone() is None
    b0, s0 = eager.detect(sim.image, sim.truth.pixel_size)
    assert len(b0) > 100 and b1.shape == b0.shape
    o0, o1 = np.lexsort(b0.T[::-1].round(1)), np.lexsort(b1.T[::-1].round(1))
    np.testing.assert_allclose(b1[o1], b0[o0], atol=1e-3)
    np.testing.assert_allclose(s1[o1], s0[o0], atol=1e-4)


# --------------------------------------------------------------------------- fast inference
@pytest.mark.parametrize("n", [64, 300, 576, 577, 900, 1706, 3413])
def test_tile_grid_covers_with_overlap(n):
    starts, side = det._tile_grid(n, 512, 64, 8)
    if n <= 512 + 64:
        assert (starts, side) == ([0], n)
        return
    assert side <= 512 and side % 8 == 0
    assert starts[0] == 0 and starts[-1] + side == n  # covers the whole range
    gaps = np.diff(starts)
    assert (side - gaps >= 64).all()  # neighbours overlap by at least 64 px
    # the fewest tiles: one tile fewer could not cover n with that overlap
    k = len(starts)
    assert (k - 1) * 512 - (k - 2) * 64 < n


@needs_weights
def test_fast_inference_equals_the_torchvision_forward(shipped):
    # the streamlined forward (pre-NMS top-n decoded only, threshold before NMS) is the same network
    sim = sample_image(seed=0)
    can, _ = det.prepare_image(sim.image, sim.truth.pixel_size)
    tile = can[:256, :320]
    b0, s0 = det._predict(shipped.model, tile, "cpu")
    keep = s0 >= shipped.score_threshold
    b0, s0 = b0[keep], s0[keep]
    b1, s1 = shipped._infer(tile)
    assert len(b0) > 30 and b1.shape == b0.shape
    o0, o1 = np.argsort(-s0), np.argsort(-s1)
    np.testing.assert_allclose(b1[o1], b0[o0], atol=1e-2)
    np.testing.assert_allclose(s1[o1], s0[o0], atol=1e-4)


@needs_weights
def test_a_small_frames_single_tile_keeps_the_proposals_per_px_of_a_full_tile(shipped, monkeypatch):
    # a frame smaller than one tile: the RPN keeps as many proposals per px as on a full
    # tile (the model's count would send ~4x more low-score ones through the box head),
    # and the same hexagons come out
    sim = sample_image(seed=0, size=224)
    can, _ = det.prepare_image(sim.image, sim.truth.pixel_size)
    h, w = can.shape
    asked = []
    infer = shipped._infer
    monkeypatch.setattr(shipped, "_infer", lambda tile, core=None, pre_nms=None: asked.append(pre_nms) or infer(
        tile, core, pre_nms))
    b1, s1 = shipped.detect_canonical(can)
    full = shipped.model.rpn.pre_nms_top_n()
    assert asked == [round(full * h * w / shipped.tile**2)] and asked[0] < full / 4
    b0, s0 = infer(can, None, full)
    assert len(b1) >= 25 and abs(len(b1) - len(b0)) <= 1
    c0, c1 = (b0[:, :2] + b0[:, 2:]) / 2, (b1[:, :2] + b1[:, 2:]) / 2
    assert np.max(np.min(np.hypot(*(c1[:, None] - c0[None]).transpose(2, 0, 1)), axis=1)) < 0.05 * det.A_PX


# --------------------------------------------------------------------------- memory of large frames
@pytest.mark.parametrize("shape, scale", [((301, 410), 0.8333), ((520, 497), 0.5), ((400, 380), 0.25)])
def test_strip_resampling_equals_the_whole_image_call(shape, scale, rng):
    img = (rng.random(shape) * 1000).astype(np.float32)
    whole = torch.nn.functional.interpolate(torch.from_numpy(img)[None, None], scale_factor=None,
                                            size=tuple(int(round(n * scale)) for n in shape), mode="bilinear",
                                            align_corners=False, antialias=True)[0, 0].numpy()
    for view in (img, img[3:-2, 5:-4]):  # a crop of a frame: strided, not copied whole
        ref = whole if view is img else det._resample(np.ascontiguousarray(view), scale)[0]
        for rows in (2, 37, 10_000):
            out, s = det._resample(view, scale, strip_rows=rows)
            assert out.shape == ref.shape and s == (ref.shape[1] / view.shape[1], ref.shape[0] / view.shape[0])
            # the same taps, weights and order as torch: equal to float rounding (bit-equal above 0.5)
            np.testing.assert_allclose(out, ref, rtol=0, atol=2e-7 * float(np.abs(ref).max()))
            if scale >= 0.5:
                assert np.array_equal(out, ref)


def test_normalize_in_place_equals_the_copy_and_spares_the_caller(rng):
    img = (rng.random((300, 280)) * 50 + 7).astype(np.float32)
    keep = img.copy()
    ref = det.normalize_image(img)
    assert np.array_equal(img, keep)  # not in place unless asked
    work = img.copy()
    out = det.normalize_image(work, inplace=True)
    assert out is work and np.array_equal(out, ref)
    # prepare_image never writes into the caller's frame, also where it keeps its size
    for ps in (0.12, 0.09):
        det.prepare_image(img, ps)
        assert np.array_equal(img, keep)


def test_streamed_canonical_rows_equal_the_whole_canonical_image(monkeypatch):
    sim = sample_image(seed=2, size=1400)  # canonical 1050² px: sampled every other row and column
    ps = sim.truth.pixel_size
    whole, s = det.prepare_image(sim.image, ps)
    monkeypatch.setattr(det, "RESAMPLE_STRIP_FROM", 1 << 16)
    rows, s2 = det.prepare_image(sim.image, ps, stream=True)
    assert isinstance(rows, det.CanonicalRows) and rows.shape == whole.shape and s2 == s
    assert np.array_equal(rows.rows(0, whole.shape[0]), whole)
    assert np.array_equal(rows.rows(333, 871), whole[333:871])  # any band: the same rows
    assert np.array_equal(rows.rows(800, 1050), whole[800:1050])  # overlapping the last: its rows reused
    assert det.prepare_image(np.full((1400, 1400), 5.0, np.float32), ps, stream=True)[0] is None
    # the image is never made whole: numpy's allocations (bands, the levels' sample of every
    # other row and column) and torch's (the bands' horizontal pass) stay a fraction of it
    import tracemalloc

    monkeypatch.setattr(det, "RESAMPLE_STRIP_ROWS", 64)
    sizes = []
    interpolate = torch.nn.functional.interpolate

    def spy(*a, **k):
        out = interpolate(*a, **k)
        sizes.append(out.numel())
        return out

    monkeypatch.setattr(torch.nn.functional, "interpolate", spy)
    tracemalloc.start()
    rows = det.prepare_image(sim.image, ps, stream=True)[0]
    band = rows.rows(500, 620)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert np.array_equal(band, whole[500:620])
    assert peak < 0.7 * whole.nbytes, (peak, whole.nbytes)
    assert len(sizes) > 10 and max(sizes) < 0.2 * whole.size


@needs_weights
def test_streamed_detection_finds_the_same_hexagons(shipped, monkeypatch):
    sim = sample_image(seed=3, size=900)  # canonical 675² px: 2 x 2 tiles
    ps = sim.truth.pixel_size
    b0, s0 = shipped.detect(sim.image, ps)
    monkeypatch.setattr(det, "RESAMPLE_STRIP_FROM", 1 << 16)
    calls = []
    b1, s1 = shipped.detect(sim.image[:, :], ps, progress=lambda d, n: calls.append((d, n)))
    assert len(b0) > 200 and calls[-1] == (4, 4)
    assert np.array_equal(b1, b0) and np.array_equal(s1, s0)
