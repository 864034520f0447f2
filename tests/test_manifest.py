import subprocess
import sys

import npe2


def test_manifest_validates():
    pm = npe2.PluginManager.instance()
    pm.discover()
    assert "napari-tmd-defects" in pm._manifests
    res = subprocess.run([sys.executable, "-m", "npe2", "validate", "napari-tmd-defects"],
                         capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "valid" in res.stdout


def test_reader_patterns_cover_every_image_suffix():
    from pathlib import Path

    import yaml

    import napari_tmd_defects
    from napari_tmd_defects.io import IMAGE_SUFFIXES

    manifest = yaml.safe_load((Path(napari_tmd_defects.__file__).parent / "napari.yaml").read_text())
    patterns = set(manifest["contributions"]["readers"][0]["filename_patterns"])
    assert {f"*{s}" for s in IMAGE_SUFFIXES} <= patterns
