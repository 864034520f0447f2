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
