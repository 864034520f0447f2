"""`tmd-defects analyze --trust-pixel-size`: the flag reaches the batch options."""


def test_the_cli_passes_trust_pixel_size_to_the_batch(monkeypatch, tmp_path):
    from napari_tmd_defects import batch, cli

    seen = {}
    monkeypatch.setattr(batch, "run_batch", lambda images, opts, **kw: seen.setdefault("opts", opts) and [])
    for argv, trust in ((["x.tif"], False), (["x.tif", "--trust-pixel-size"], True)):
        seen.clear()
        cli.main(["analyze", *argv, "--out", str(tmp_path), "--pixel-size", "0.1"])
        assert seen["opts"].trust_pixel_size is trust and seen["opts"].pixel_size == 0.1
