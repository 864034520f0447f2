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
