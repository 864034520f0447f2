import numpy as np
import pytest
from PIL import Image

from napari_tmd_defects.io import ImageReadError, atomic_write, read_image, write_tiff


def test_tiff_round_trip_with_pixel_size(tmp_path):
    img = np.random.default_rng(0).random((40, 50)).astype(np.float32)
    p = write_tiff(tmp_path / "a.tif", img, 0.0855)
    out, meta = read_image(p)
    assert np.array_equal(out, img)
    assert meta["pixel_size_A"] == pytest.approx(0.0855, rel=1e-5)


def test_png_rgb_is_converted_to_grey(tmp_path):
    rgb = np.zeros((30, 20, 3), np.uint8)
    rgb[..., 0] = 100
    rgb[..., 1] = 100
    rgb[..., 2] = 100
    Image.fromarray(rgb).save(tmp_path / "a.png")
    out, meta = read_image(tmp_path / "a.png")
    assert out.shape == (30, 20)
    assert np.allclose(out, 100, atol=0.5)
    assert meta["pixel_size_A"] is None


def test_8bit_jpeg(tmp_path):
    g = (np.random.default_rng(0).random((64, 64)) * 255).astype(np.uint8)
    Image.fromarray(g).save(tmp_path / "a.jpg")
    out, _ = read_image(tmp_path / "a.jpg")
    assert out.shape == (64, 64) and out.dtype == np.float32


def test_unreadable_and_missing_files(tmp_path):
    (tmp_path / "bad.tif").write_bytes(b"not a tiff")
    with pytest.raises(ImageReadError, match="bad.tif"):
        read_image(tmp_path / "bad.tif")
    with pytest.raises(FileNotFoundError):
        read_image(tmp_path / "none.tif")


def test_stack_is_refused_with_advice(tmp_path):
    np.save(tmp_path / "s.npy", np.zeros((3, 8, 8)))
    with pytest.raises(ImageReadError, match="frame"):
        read_image(tmp_path / "s.npy")


def test_atomic_write_leaves_nothing_on_error(tmp_path):
    target = tmp_path / "out.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_write(target, "w") as fh:
            fh.write("new")
            raise RuntimeError("boom")
    assert target.read_text() == "old"
    assert list(tmp_path.iterdir()) == [target]


def _rsciio_signal(data, scale, units):
    ax = [{"size": n, "name": nm, "units": units, "scale": scale, "offset": 0.0, "navigate": False}
          for n, nm in zip(data.shape, ("y", "x"))]
    return {"data": data, "axes": ax, "metadata": {"General": {"title": "t"}, "Signal": {"signal_type": ""}},
            "original_metadata": {}, "tmp_parameters": {}, "attributes": {"_lazy": False},
            "package_info": {"name": "test", "version": "0"}, "learning_results": {}, "models": {}}


@pytest.mark.parametrize("suffix", [".hspy", ".emd"])
def test_microscope_formats_through_rosettasciio(tmp_path, suffix):
    pytest.importorskip("rsciio")
    from rsciio.emd import file_writer as emd_writer
    from rsciio.hspy import file_writer as hspy_writer

    data = np.random.default_rng(0).random((30, 40)).astype(np.float32)
    path = tmp_path / f"frame{suffix}"
    (hspy_writer if suffix == ".hspy" else emd_writer)(str(path), _rsciio_signal(data, 0.0092, "nm"))
    out, meta = read_image(path)
    assert np.allclose(out, data)
    assert meta["pixel_size_A"] == pytest.approx(0.092)


def test_atomic_write_gives_normal_permissions(tmp_path):
    import os
    import stat

    target = tmp_path / "f.txt"
    with atomic_write(target, "w") as fh:
        fh.write("x")
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(target.stat().st_mode) == 0o666 & ~umask


def test_tiff_with_a_compression_tifffile_cannot_decode_is_read(tmp_path):
    from PIL import Image

    from napari_tmd_defects.io import read_image

    a = (np.arange(64 * 64) % 251).reshape(64, 64).astype(np.uint8)
    p = tmp_path / "lzw.tif"
    Image.fromarray(a).save(p, compression="tiff_lzw")
    img, meta = read_image(p)
    assert img.shape == (64, 64) and np.array_equal(img, a.astype(np.float32))


@pytest.mark.parametrize("title, rank", [
    ("HAADF", 3), ("DCFI(HAADF)", 3), ("HAADF Image", 3), ("MAADF", 2), ("LAADF", 2), ("ADF", 2),
    ("DF4", 2), ("DF-S", 2), ("DF2-A", 2), ("BF", 0), ("ABF", 0), ("BF-S", 0), ("iDPC", 0), ("DPC", 0),
    ("", 1), ("Mo", 1), ("Se", 1), ("SE", 1), ("Survey", 1)])
def test_detector_rank_of_image_titles(title, rank):
    from napari_tmd_defects.io import _detector_rank

    assert _detector_rank(title) == rank


def test_a_file_of_several_images_is_read_at_its_haadf_image():
    from napari_tmd_defects.io import choose_image

    bf, haadf, df = (np.full((8, 8), v, np.float32) for v in (1, 2, 3))
    data, px, meta = choose_image([("BF", bf, 0.1), ("Mo", bf, 0.1), ("DF4", df, 0.1), ("HAADF", haadf, 0.2)], "f.emd")
    assert data is haadf and px == 0.2 and meta["signal"] == "HAADF"
    assert meta["signals"] == ["BF", "Mo", "DF4", "HAADF"] and "read 'HAADF'" in meta["warnings"][0]
    # no HAADF: another annular dark field before an untitled image; a bright field alone is read, and said
    assert choose_image([("", bf, None), ("DF2", df, None)], "f")[0] is df
    data, _, meta = choose_image([("ABF", bf, None), ("DPC", df, None)], "f")
    assert data is bf and "not an annular dark-field image" in meta["warnings"][0]
    # one image: nothing to say
    assert "warnings" not in choose_image([("BF", bf, None)], "f")[2]
    # a stack is skipped for a plane; stacks alone are refused with advice
    stack = np.zeros((5, 8, 8), np.float32)
    assert choose_image([("HAADF", stack, None), ("DF4", df, None)], "f")[0] is df
    with pytest.raises(ImageReadError, match="stack of 5 frames"):
        choose_image([("HAADF", stack, None)], "f")
    with pytest.raises(ImageReadError, match="no image"):
        choose_image([], "f")


def test_a_velox_emd_of_several_detectors_is_read_at_haadf(tmp_path, monkeypatch):
    """rosettasciio's signals, in the file's order (a BF image first, an EDS map)."""
    import napari_tmd_defects.io as io_mod

    rng = np.random.default_rng(1)
    imgs = {t: rng.random((20, 30)).astype(np.float32) for t in ("BF", "S", "HAADF")}
    seen = {}

    def reader(path, **kw):
        seen.update(kw)
        sigs = []
        for t, a in imgs.items():
            s = _rsciio_signal(a, 0.0081, "nm")
            s["metadata"]["General"]["title"] = t
            sigs.append(s)
        sigs.append({"data": np.zeros(100), "axes": [], "metadata": {"General": {"title": "EDS"}}})  # a spectrum
        return sigs

    monkeypatch.setattr(io_mod, "_rsciio_reader", lambda suffix: reader)
    path = tmp_path / "velox.emd"
    path.write_bytes(b"x")
    out, meta = read_image(path)
    assert np.array_equal(out, imgs["HAADF"]) and meta["signal"] == "HAADF"
    assert meta["pixel_size_A"] == pytest.approx(0.081) and meta["signals"] == ["BF", "S", "HAADF"]
    assert seen == {"select_type": "images"}  # not the spectrum image


def _nion_props(title, scale_nm, key="dimensional_calibrations"):
    return {"title": title, key: [{"offset": 0.0, "scale": scale_nm, "units": "nm"}] * 2,
            "intensity_calibration": {"offset": 0.0, "scale": 1.0, "units": "counts"}}


@pytest.mark.parametrize("suffix", [".ndata1", ".ndata"])
def test_nion_swift_ndata(tmp_path, suffix):
    import io
    import json
    import zipfile

    data = np.random.default_rng(2).random((24, 32)).astype(np.float32)
    buf = io.BytesIO()
    np.save(buf, data)
    path = tmp_path / f"frame{suffix}"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("metadata.json", json.dumps(_nion_props("HAADF", 0.00873, key="spatial_calibrations")))
        z.writestr("data.npy", buf.getvalue())
    out, meta = read_image(path)
    assert np.array_equal(out, data) and meta["pixel_size_A"] == pytest.approx(0.0873)
    assert meta["signal"] == "HAADF" and "warnings" not in meta
    with zipfile.ZipFile(tmp_path / "bad.ndata1", "w") as z:
        z.writestr("other.txt", "x")
    with pytest.raises(ImageReadError, match="not a Nion Swift data file"):
        read_image(tmp_path / "bad.ndata1")


def test_nion_swift_hdf5_item_and_export(tmp_path):
    import json

    import h5py

    rng = np.random.default_rng(3)
    maadf, haadf = (rng.random((16, 20)).astype(np.float32) for _ in range(2))
    with h5py.File(tmp_path / "item.h5", "w") as f:  # a Swift library item
        f.create_dataset("data", data=haadf).attrs["properties"] = json.dumps(_nion_props("", 0.01) | {
            "metadata": {"hardware_source": {"channel_name": "HAADF"}}})
    out, meta = read_image(tmp_path / "item.h5")
    assert np.array_equal(out, haadf) and meta["pixel_size_A"] == pytest.approx(0.1) and meta["signal"] == "HAADF"
    with h5py.File(tmp_path / "both.nhdf", "w") as f:  # an export of two channels, MAADF first
        g = f.create_group("data")
        g.create_dataset("0", data=maadf).attrs["properties"] = json.dumps(_nion_props("MAADF", 0.02))
        g.create_dataset("1", data=haadf).attrs["properties"] = json.dumps(_nion_props("HAADF", 0.01))
    out, meta = read_image(tmp_path / "both.nhdf")
    assert np.array_equal(out, haadf) and meta["signals"] == ["MAADF", "HAADF"]
    with h5py.File(tmp_path / "seq.h5", "w") as f:  # a sequence of frames
        f.create_dataset("data", data=np.zeros((4, 8, 8))).attrs["properties"] = json.dumps(_nion_props("HAADF", 0.01))
    with pytest.raises(ImageReadError, match="stack of 4 frames"):
        read_image(tmp_path / "seq.h5")
    with h5py.File(tmp_path / "other.h5", "w") as f:
        f.create_dataset("x", data=np.zeros((8, 8)))
    with pytest.raises(ImageReadError, match="not a Nion Swift HDF5 file"):
        read_image(tmp_path / "other.h5")


def test_rgb_exports_keep_their_coloured_marks_and_colour_maps(tmp_path):
    import matplotlib

    rng = np.random.default_rng(5)
    grey = (rng.random((64, 80)) * 200).astype(np.uint8)
    rgb = np.repeat(grey[..., None], 3, axis=-1)
    rgb[50:54, 5:40] = (255, 200, 0)  # an orange scale bar: the original is kept for the analysis
    Image.fromarray(rgb).save(tmp_path / "bar.png")
    out, meta = read_image(tmp_path / "bar.png")
    assert out.shape == (64, 80) and np.array_equal(meta["rgb"], rgb) and "warnings" not in meta
    # a plain grey RGB export keeps nothing more
    Image.fromarray(np.repeat(grey[..., None], 3, axis=-1)).save(tmp_path / "grey.png")
    assert "rgb" not in read_image(tmp_path / "grey.png")[1]
    # a false-coloured one is read back through its colour map, and says so
    lut = np.round(255 * matplotlib.colormaps["jet"](np.linspace(0, 1, 256))[:, :3]).astype(np.uint8)
    Image.fromarray(lut[grey]).save(tmp_path / "jet.png")
    out, meta = read_image(tmp_path / "jet.png")
    assert np.abs(out - grey).max() <= 2 and "'jet' colour map" in meta["warnings"][0] and "rgb" not in meta
