"""The multislice Z-contrast table and its API (napari_tmd_defects.zcontrast)."""

import json
from importlib.resources import files

import numpy as np
import pytest

from napari_tmd_defects import zcontrast
from napari_tmd_defects.zcontrast import (
    ZContrastTableError,
    calibrated_voltages,
    chalcogen_signal,
    effective_z,
    load_table,
    metal_signal,
    z_exponent,
)

VOLTAGES = (60.0, 80.0, 100.0, 200.0)
METALS = (22, 23, 24, 25, 26, 27, 41, 42, 44, 45, 73, 74, 75, 78)
CHALCOGENS = (8, 16, 34, 52)


def test_table_is_package_data_with_all_voltages():
    assert files("napari_tmd_defects").joinpath("data", "z_contrast.json").is_file()
    assert calibrated_voltages() == VOLTAGES
    for kv in VOLTAGES:
        t = load_table(kv)
        assert t["voltage_kv"] == kv
        assert t["optics"]["voltage_kv"] == kv
        assert t["optics"]["convergence_mrad"] == 27.0
        assert t["optics"]["detector_mrad"] == [70.0, 277.9]
        # the detector lies inside the anti-aliasing limit of the potential sampling
        assert t["max_angle_mrad"] >= 277.9
        assert sorted(int(z) for z in t["metal"]) == sorted(METALS)
        assert t["metal"]["74"] == pytest.approx(1.0)
        pairs = {tuple(int(v) for v in k.split(",")) for k in t["chalcogen"]}
        expected = {(a, b) for a in (0, *CHALCOGENS) for b in CHALCOGENS if a <= b}
        assert pairs == expected
        # the stored exponent is the least-squares fit to the stored signals
        z = np.array(METALS, float)
        s = np.array([t["metal"][str(k)] for k in METALS])
        assert np.polyfit(np.log(z), np.log(s), 1)[0] == pytest.approx(t["z_exponent"], abs=1e-3)


def test_nearest_voltage_and_copy():
    assert load_table(75)["voltage_kv"] == 80.0
    assert load_table(90)["voltage_kv"] == 80.0  # a tie goes to the lower voltage
    assert load_table(130)["voltage_kv"] == 100.0
    assert load_table(300)["voltage_kv"] == 200.0
    t = load_table(80)
    t["metal"]["42"] = -1.0
    assert load_table(80)["metal"]["42"] > 0
    with pytest.raises(ValueError, match="voltage"):
        load_table(-5)


@pytest.mark.parametrize("kv", VOLTAGES)
def test_metal_signal_monotonic_in_z(kv):
    z = np.linspace(1, 92, 500)
    s = metal_signal(z, kv)
    assert s.shape == z.shape
    assert np.all(s > 0) and np.all(np.diff(s) > 0)
    assert float(metal_signal(74, kv)) == pytest.approx(1.0)
    assert float(metal_signal(0, kv)) == 0.0
    assert metal_signal(np.array([[0, 42], [74, 78]]), kv).shape == (2, 2)
    with pytest.raises(ValueError):
        metal_signal(-1, kv)


def test_metal_signal_interpolates_and_extrapolates():
    t = load_table(80)
    for z in METALS:
        assert float(metal_signal(z)) == pytest.approx(t["metal"][str(z)], rel=1e-9)
    # between knots: inside the neighbours; beyond them: the fitted power law
    assert t["metal"]["42"] < float(metal_signal(43)) < t["metal"]["44"]
    n = z_exponent(80)
    assert float(metal_signal(90)) == pytest.approx(t["metal"]["78"] * (90 / 78) ** n, rel=1e-9)
    assert float(metal_signal(11)) == pytest.approx(t["metal"]["22"] * 0.5**n, rel=1e-9)


def test_w_mo_ratio_physical():
    # kinematic (first-Born) estimates give W/Mo ~2.8 for this detector; a single W atom is
    # a strong phase object at 60-200 kV, so the multislice ratio is lower (docs/reports/z_contrast.md)
    ratios = [float(metal_signal(74, kv) / metal_signal(42, kv)) for kv in VOLTAGES]
    for r in ratios:
        assert 1.8 < r < 3.2
    assert ratios[-1] > ratios[1]  # heavy-atom contrast grows towards the kinematic value
    # Re is brighter than W, Mo than Nb, and the 3d dopants are far dimmer than Mo
    assert metal_signal(75) > metal_signal(74) > metal_signal(73)
    assert metal_signal(42) > metal_signal(41)
    assert metal_signal(24) < 0.6 * metal_signal(42)


@pytest.mark.parametrize("kv", VOLTAGES)
def test_z_exponent(kv):
    n = z_exponent(kv)
    assert 1.0 < n < 2.2
    assert n == load_table(kv)["z_exponent"]


@pytest.mark.parametrize("host", [42, 74, 23.0])
def test_effective_z_inverts_metal_signal(host):
    z = np.linspace(5, 95, 181)
    for kv in VOLTAGES:
        ratio = metal_signal(z, kv) / metal_signal(host, kv)
        back = effective_z(ratio, host, kv)
        np.testing.assert_allclose(back, z, rtol=0.01)
        assert np.all(np.diff(back) > 0)
    assert float(effective_z(1.0, host)) == pytest.approx(host, rel=1e-6)


def test_effective_z_nan_and_broadcast():
    out = effective_z(np.array([-1.0, 0.0, np.nan, 0.5, 2.0]), 74)
    assert np.all(np.isnan(out[:3])) and np.all(np.isfinite(out[3:]))
    assert out[3] < 74 < out[4]
    assert effective_z(np.ones((3, 1)), np.array([42, 74])).shape == (3, 2)
    # a W site at half the W signal looks like a 4d atom, a Mo site at twice Mo like a 5d one
    assert 40 < float(effective_z(0.5, 74)) < 50
    assert 70 < float(effective_z(2.0, 42)) < 80


@pytest.mark.parametrize("z", CHALCOGENS)
def test_one_atom_chalcogen_column_fraction(z):
    frac = chalcogen_signal(0, z) / chalcogen_signal(z, z)
    assert 0.35 < frac < 0.6
    assert frac == pytest.approx(load_table(80)["one_atom_fraction"][str(z)], rel=1e-3)


def test_chalcogen_signal_table_and_model():
    t = load_table(80)
    assert chalcogen_signal(16, 34) == pytest.approx(t["chalcogen"]["16,34"])
    assert chalcogen_signal(34, 16) == chalcogen_signal(16, 34)
    assert chalcogen_signal(0, 0) == 0.0
    assert isinstance(chalcogen_signal(16, 16), float)
    out = chalcogen_signal(np.array([0, 16, 34]), 52)
    assert out.shape == (3,) and np.all(np.diff(out) > 0)
    # full columns brighter with Z, and brighter than one atom
    full = [chalcogen_signal(z, z) for z in CHALCOGENS]
    assert np.all(np.diff(full) > 0)
    # outside the table: Cl between S and Se (one atom, pairs), As+Se close to Se2
    assert chalcogen_signal(0, 16) < chalcogen_signal(0, 17) < chalcogen_signal(0, 34)
    assert chalcogen_signal(16, 16) < chalcogen_signal(16, 17) < chalcogen_signal(16, 34)
    assert chalcogen_signal(33, 34) == pytest.approx(chalcogen_signal(34, 34), rel=0.1)
    # the model reproduces the calibrated mixed columns within 10 %
    for key, err in t["chalcogen_model"]["mixed_pair_error"].items():
        assert abs(err) < 0.1, key
    with pytest.raises(ValueError):
        chalcogen_signal(-1, 16)


def test_voltages_differ():
    # the calibration is per voltage, not one table copied
    assert metal_signal(24, 60) != metal_signal(24, 200)
    assert chalcogen_signal(0, 16, 60) != chalcogen_signal(0, 16, 200)


def test_missing_table_raises(monkeypatch, tmp_path):
    monkeypatch.setattr(zcontrast, "_TABLE_PATH", tmp_path / "z_contrast.json")
    with pytest.raises(ZContrastTableError, match="not found"):
        load_table()
    with pytest.raises(ZContrastTableError):
        metal_signal(42)


@pytest.mark.parametrize(
    "text",
    [
        "{not json",
        "[]",
        json.dumps({"voltages": {}}),
        json.dumps({"voltages": {"80": {"voltage_kv": 80}}}),
    ],
)
def test_corrupt_table_raises(monkeypatch, tmp_path, text):
    path = tmp_path / "z_contrast.json"
    path.write_text(text)
    monkeypatch.setattr(zcontrast, "_TABLE_PATH", path)
    with pytest.raises(ZContrastTableError, match="corrupt"):
        load_table(80)


def test_non_monotonic_table_raises(monkeypatch, tmp_path):
    good = json.loads(files("napari_tmd_defects").joinpath("data", "z_contrast.json").read_text())
    good["voltages"]["80"]["metal"]["42"] = 2.0  # Mo brighter than W
    path = tmp_path / "z_contrast.json"
    path.write_text(json.dumps(good))
    monkeypatch.setattr(zcontrast, "_TABLE_PATH", path)
    with pytest.raises(ZContrastTableError, match="increase with Z"):
        z_exponent(80)


def test_mixed_chalcogen_columns_depend_on_their_order_along_the_beam():
    """The split between a mixed column's two orders is the table's: the lighter atom on the
    entrance side gives signal · (1 + δ), the other order · (1 - δ)."""
    from napari_tmd_defects.zcontrast import chalcogen_order_split

    for kv in (60, 80, 100, 200):
        t = load_table(kv)
        for key, (light_first, heavy_first) in t["chalcogen_sides"].items():
            z1, z2 = (int(z) for z in key.split(","))
            d = chalcogen_order_split(z1, z2, kv)
            assert chalcogen_order_split(z2, z1, kv) == d
            if z1 == 0 or z1 == z2:
                assert d == 0.0  # one species, or one atom: no order to tell
                continue
            assert 0.02 < d < 0.1, key
            mean = chalcogen_signal(z1, z2, kv)
            assert mean * (1 + d) == pytest.approx(light_first, rel=1e-3)
            assert mean * (1 - d) == pytest.approx(heavy_first, rel=1e-3)
    out = chalcogen_order_split(np.array([16, 34, 52]), 34)
    assert out.shape == (3,) and out[1] == 0.0 and out[0] > 0 and out[2] > 0
    # per column (entrance, exit): the factor over the mean of the two orders
    from napari_tmd_defects.zcontrast import chalcogen_order_factor

    d = chalcogen_order_split(16, 34)
    np.testing.assert_allclose(chalcogen_order_factor([16, 34, 34, 0], [34, 16, 34, 16]), [1 + d, 1 - d, 1, 1])
