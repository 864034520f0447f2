"""HAADF Z-contrast of isolated atomic columns, calibrated with the multislice backend.

The table ``data/z_contrast.json`` (written by ``benchmarks/calibrate_z_contrast.py``)
holds, for a few acceleration voltages (60, 80, 100 and 200 kV; probe, detector and
aberrations otherwise those of the default :class:`~.simulation.Optics`), the
noise-free peak signal of isolated columns of a 2H-MX2 monolayer from abTEM frozen-phonon
multislice runs (probe on the column; the code path of the normalisation of
:func:`~.multislice.simulate_multislice`, with a potential sampling fine enough for the
peak of a single heavy atom):

* **metal-plane atoms** — a column of one atom in the mid-plane, for Ti-Co, Nb-Rh and
  Ta-Pt dopants and hosts;
* **chalcogen columns** — two atoms at +-d/2 along the beam from {O, S, Se, Te}, or one
  atom (the other missing, ``z = 0``), averaged over which atom sits on the beam-entrance
  side.

Every signal is relative to that of one W atom in the metal plane at the same voltage
(so ``metal_signal(74) == 1``). All functions take ``voltage_kv`` and use the nearest
calibrated voltage; nothing here needs abTEM or Qt.

Single heavy atoms are strong phase objects, so their contrast grows more slowly with Z
than the kinematic Z^1.7-Z^2 rules: the fitted exponent is ~1.4 at 80 kV (W/Mo ~2.0)
and ~1.6 at 200 kV. ``docs/reports/z_contrast.md`` has the tables and checks.
"""

from __future__ import annotations

import copy
import json
import math
from functools import lru_cache
from pathlib import Path

import numpy as np

__all__ = [
    "ZContrastTableError",
    "calibrated_voltages",
    "chalcogen_order_factor",
    "chalcogen_order_split",
    "chalcogen_signal",
    "effective_z",
    "load_table",
    "metal_signal",
    "z_exponent",
]

#: The calibration table shipped with the package.
_TABLE_PATH = Path(__file__).with_name("data") / "z_contrast.json"
_REGENERATE = "reinstall the package or regenerate it with benchmarks/calibrate_z_contrast.py"


class ZContrastTableError(RuntimeError):
    """The Z-contrast calibration table is missing or unreadable."""


# --------------------------------------------------------------------------- table
def _check_entry(key: str, entry: dict) -> None:
    metal = entry.get("metal")
    if not isinstance(metal, dict) or len(metal) < 2:
        raise ValueError(f"voltage {key}: 'metal' needs at least two atomic numbers")
    z = np.array([float(k) for k in metal])
    s = np.array([float(v) for v in metal.values()])
    if not (np.all(np.isfinite(s)) and np.all(s > 0) and np.all(z > 0)):
        raise ValueError(f"voltage {key}: metal signals must be positive numbers")
    order = np.argsort(z)
    if np.any(np.diff(s[order]) <= 0):
        raise ValueError(f"voltage {key}: metal signals do not increase with Z")
    n = float(entry["z_exponent"])
    if not (math.isfinite(n) and n > 0):
        raise ValueError(f"voltage {key}: z_exponent must be a positive number")
    for pair, v in entry.get("chalcogen", {}).items():
        z1, z2 = (int(t) for t in pair.split(","))
        if not (0 <= z1 <= z2 and math.isfinite(float(v)) and float(v) >= 0):
            raise ValueError(f"voltage {key}: bad chalcogen entry {pair!r}: {v!r}")
    model = entry["chalcogen_model"]
    for name in ("one_atom_factor", "pair_factor"):
        factors = model[name]
        if not isinstance(factors, dict) or not factors or not all(float(v) > 0 for v in factors.values()):
            raise ValueError(f"voltage {key}: chalcogen_model.{name} must map Z to positive factors")
    float(entry["voltage_kv"])


@lru_cache(maxsize=4)
def _read_table(path: str) -> dict:
    """Parse and check the JSON table at ``path`` (cached per path)."""
    p = Path(path)
    if not p.is_file():
        raise ZContrastTableError(f"Z-contrast table not found: {p.name} ({_REGENERATE})")
    try:
        table = json.loads(p.read_text(encoding="utf-8"))
        voltages = table["voltages"]
        if not isinstance(voltages, dict) or not voltages:
            raise ValueError("no calibrated voltage")
        for key, entry in voltages.items():
            _check_entry(key, entry)
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ZContrastTableError(f"Z-contrast table {p.name} is corrupt: {exc} ({_REGENERATE})") from exc
    return table


def _entry(voltage_kv: float) -> dict:
    """Cached (read-only) table entry of the calibrated voltage nearest ``voltage_kv``."""
    v = float(voltage_kv)
    if not (math.isfinite(v) and v > 0):
        raise ValueError(f"voltage_kv must be a positive number, got {voltage_kv!r}")
    voltages = _read_table(str(_TABLE_PATH))["voltages"]
    key = min(voltages, key=lambda k: (abs(float(voltages[k]["voltage_kv"]) - v), float(voltages[k]["voltage_kv"])))
    return voltages[key]


def calibrated_voltages() -> tuple[float, ...]:
    """Acceleration voltages (kV) of the table, ascending."""
    voltages = _read_table(str(_TABLE_PATH))["voltages"]
    return tuple(sorted(float(e["voltage_kv"]) for e in voltages.values()))


def load_table(voltage_kv: float = 80.0) -> dict:
    """Calibration of the calibrated voltage nearest ``voltage_kv``.

    Parameters
    ----------
    voltage_kv : float
        Acceleration voltage, kV.

    Returns
    -------
    dict
        A copy of the table entry: ``voltage_kv``, ``optics`` (the fields of
        :class:`~.simulation.Optics`: angles in mrad, defocus in Å, C3 in mm), ``metal`` ``{"Z": signal}``, ``chalcogen`` ``{"z1,z2": signal}`` (z1 <= z2,
        0 = missing atom), ``z_exponent`` (n of the fit signal ~ Z^n), ``one_atom_fraction``
        ``{"Z": X1/X2}``, ``chalcogen_model`` and the abTEM settings. Signals are relative
        to one W atom in the metal plane; ``reference_signal`` is that atom's signal as a
        fraction of the incident beam.

    Raises
    ------
    ZContrastTableError
        The JSON file is missing or corrupt.
    """
    return copy.deepcopy(_entry(voltage_kv))


# --------------------------------------------------------------------------- metal plane
def _knots(entry: dict) -> tuple[np.ndarray, np.ndarray, float]:
    """log Z, log signal (ascending Z) and the fitted exponent of one table entry."""
    z = np.array([float(k) for k in entry["metal"]])
    s = np.array([float(v) for v in entry["metal"].values()])
    order = np.argsort(z)
    return np.log(z[order]), np.log(s[order]), float(entry["z_exponent"])


def _metal_from_entry(entry: dict, z) -> np.ndarray:
    """Log-log interpolation of one entry's metal-plane signals (power-law tails, 0 at z = 0)."""
    z = np.asarray(z, dtype=float)
    if np.any(z < 0):
        raise ValueError("atomic numbers must be >= 0")
    lz, ls, n = _knots(entry)
    with np.errstate(divide="ignore", invalid="ignore"):
        x = np.log(z)
        y = np.interp(x, lz, ls)
        y = np.where(x < lz[0], ls[0] + n * (x - lz[0]), y)
        y = np.where(x > lz[-1], ls[-1] + n * (x - lz[-1]), y)
        out = np.exp(y)
    return np.where(z == 0, 0.0, out)


def metal_signal(z: int | float | np.ndarray, voltage_kv: float = 80.0) -> np.ndarray:
    """Peak signal of a one-atom column in the metal plane, relative to one W atom.

    Parameters
    ----------
    z : int, float or array
        Atomic number(s); non-integers are interpolated, 0 gives 0 (empty column).
    voltage_kv : float
        Acceleration voltage, kV (nearest calibrated voltage).

    Returns
    -------
    numpy.ndarray
        Relative signal, same shape as ``z`` (dimensionless). Piecewise linear in
        log Z - log signal between calibrated atomic numbers; beyond them the fitted power
        law ``Z**n`` continues from the last calibrated point.

    Raises
    ------
    ValueError
        A negative atomic number.
    """
    return _metal_from_entry(_entry(voltage_kv), z)


def z_exponent(voltage_kv: float = 80.0) -> float:
    """Exponent n of the power law signal ~ Z^n fitted to the metal-plane atoms.

    Parameters
    ----------
    voltage_kv : float
        Acceleration voltage, kV (nearest calibrated voltage).

    Returns
    -------
    float
        n (dimensionless).
    """
    return float(_entry(voltage_kv)["z_exponent"])


def effective_z(signal_ratio, z_host, voltage_kv: float = 80.0) -> np.ndarray:
    """Atomic number of a one-atom column whose signal is ``signal_ratio`` times the host's.

    The inverse of :func:`metal_signal`: ``metal_signal(effective_z(r, zh)) ==
    r * metal_signal(zh)``. Monotonic in ``signal_ratio``.

    Parameters
    ----------
    signal_ratio : float or array
        Measured peak signal of the column divided by that of a host atom's column
        (dimensionless, background subtracted).
    z_host : int, float or array
        Atomic number of the host atom (broadcast against ``signal_ratio``).
    voltage_kv : float
        Acceleration voltage, kV (nearest calibrated voltage).

    Returns
    -------
    numpy.ndarray
        Effective atomic number (broadcast shape); NaN where ``signal_ratio <= 0`` or NaN.
    """
    entry = _entry(voltage_kv)
    ratio = np.asarray(signal_ratio, dtype=float)
    target = ratio * _metal_from_entry(entry, z_host)
    lz, ls, n = _knots(entry)
    with np.errstate(divide="ignore", invalid="ignore"):
        y = np.log(np.where(target > 0, target, np.nan))
        x = np.interp(y, ls, lz)
        x = np.where(y < ls[0], lz[0] + (y - ls[0]) / n, x)
        x = np.where(y > ls[-1], lz[-1] + (y - ls[-1]) / n, x)
        out = np.exp(x)
    return np.where((ratio > 0) & np.isfinite(target), out, np.nan)


# --------------------------------------------------------------------------- chalcogen site
def _factor(factors: dict, z: float) -> float:
    """A factor tabulated per Z, linear in log Z between entries, constant beyond them."""
    zs = np.array([float(k) for k in factors])
    order = np.argsort(zs)
    vals = np.array([float(v) for v in factors.values()])[order]
    return float(np.interp(math.log(z), np.log(zs[order]), vals))


def _one_atom(entry: dict, z: int, use_table: bool = True) -> float:
    """Signal of a chalcogen column with one atom ``z`` (the other missing)."""
    if z == 0:
        return 0.0
    v = entry["chalcogen"].get(f"0,{z}") if use_table else None
    if v is not None:
        return float(v)
    return _factor(entry["chalcogen_model"]["one_atom_factor"], z) * float(_metal_from_entry(entry, z))


def _pair_model(entry: dict, z1: int, z2: int) -> float:
    """Two-atom column from one-atom columns: ``pair_factor(mean Z) * (one(z1) + one(z2))``."""
    f = _factor(entry["chalcogen_model"]["pair_factor"], 0.5 * (z1 + z2))
    return f * (_one_atom(entry, z1) + _one_atom(entry, z2))


def _pair(entry: dict, z1: int, z2: int) -> float:
    z1, z2 = sorted((z1, z2))
    v = entry["chalcogen"].get(f"{z1},{z2}")
    if v is not None:
        return float(v)
    if z1 == 0:
        return _one_atom(entry, z2)
    return _pair_model(entry, z1, z2)


def chalcogen_signal(z1, z2, voltage_kv: float = 80.0) -> float | np.ndarray:
    """Peak signal of a chalcogen column of two atoms ``z1``, ``z2`` (0: missing), relative to one W atom.

    Calibrated columns (pairs from {0, O, S, Se, Te}) come from the table: the mean of the
    two orders along the beam (which atom is on the entrance side: for mixed pairs they
    differ by 7-14 % at 80 kV, the lighter atom on the entrance side giving more signal;
    for one-atom columns by < 1 %; see ``chalcogen_sides`` in :func:`load_table`).
    Other columns:

    * one atom: ``metal_signal(z) * one_atom_factor(z)``, the factor being the calibrated
      one-atom chalcogen column over the metal-plane interpolation at the same Z
      (linear in log Z between O, S, Se and Te, constant beyond);
    * two atoms: ``pair_factor(Z̄) * (one(z1) + one(z2))`` with Z̄ = (z1 + z2) / 2 and
      ``pair_factor`` = X2 / (2 X1) of the calibrated homonuclear columns, interpolated
      the same way (at 80 kV from ~0.97 for O2 to ~1.13 for Te2: channelling along a
      heavy column makes two atoms brighter than twice one). On the calibrated mixed
      columns this model is within 5 % of the multislice values.

    Parameters
    ----------
    z1, z2 : int or array of int
        Atomic numbers of the two atoms (order does not matter; 0 = missing atom).
    voltage_kv : float
        Acceleration voltage, kV (nearest calibrated voltage).

    Returns
    -------
    float or numpy.ndarray
        Relative signal (dimensionless): a float for scalar inputs, else an array of the
        broadcast shape.
    """
    return _per_pair(_pair, z1, z2, voltage_kv)


def _per_pair(f, z1, z2, voltage_kv: float) -> float | np.ndarray:
    """``f(table entry, z1, z2)`` of every pair of the broadcast ``z1``, ``z2``: a float for
    scalar inputs, else an array of the broadcast shape."""
    entry = _entry(voltage_kv)
    a, b = np.broadcast_arrays(np.asarray(z1), np.asarray(z2))
    if np.any(a < 0) or np.any(b < 0) or np.any(a != np.round(a)) or np.any(b != np.round(b)):
        raise ValueError("chalcogen atomic numbers must be non-negative integers")
    out = np.array([f(entry, int(p), int(q)) for p, q in zip(a.ravel(), b.ravel())], dtype=float)
    if a.ndim == 0:
        return float(out[0])
    return out.reshape(a.shape)


def _order_split(entry: dict, z1: int, z2: int) -> float:
    if z1 == z2 or z1 == 0 or z2 == 0:
        return 0.0
    lo, hi = sorted((z1, z2))
    sides = entry.get("chalcogen_sides", {}).get(f"{lo},{hi}")
    if not sides or sum(sides) <= 0:
        return 0.0  # an uncalibrated pair: no order effect known
    return float((sides[0] - sides[1]) / (sides[0] + sides[1]))


def chalcogen_order_split(z1, z2, voltage_kv: float = 80.0) -> float | np.ndarray:
    """Relative half-difference of a two-atom chalcogen column's signal between its two
    orders along the beam: ``(lighter atom on the entrance side - heavier on the entrance
    side) / their sum`` (``chalcogen_sides`` of the table; 0 for a column of one species,
    of one atom, or of a pair the table does not hold).

    A mixed column's signal is :func:`chalcogen_signal` ``· (1 + δ)`` with the lighter atom
    on the beam-entrance side and ``· (1 - δ)`` the other way round (at 80 kV: S/Se 0.050,
    S/Te 0.067, Se/Te 0.034). Arguments as :func:`chalcogen_signal`.
    """
    return _per_pair(_order_split, z1, z2, voltage_kv)


def chalcogen_order_factor(entrance, exit_, voltage_kv: float = 80.0) -> np.ndarray:
    """Per column of atoms ``entrance`` (beam-entrance side) and ``exit_``: its signal over
    the mean of its two orders, ``1 + δ`` with the lighter atom on the entrance side, ``1 - δ``
    the other way round, 1 for a column of one species or one atom
    (:func:`chalcogen_order_split`). Arrays of the broadcast shape."""
    a, b = np.broadcast_arrays(np.asarray(entrance, np.int64), np.asarray(exit_, np.int64))
    out = np.ones(a.shape)
    mixed = (a != b) & (a > 0) & (b > 0)
    if mixed.any():
        d = chalcogen_order_split(a[mixed], b[mixed], voltage_kv)
        out[mixed] += np.where(a[mixed] < b[mixed], d, -d)
    return out
