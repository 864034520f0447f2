"""Multislice HAADF-STEM images of 2H-MX2 monolayers with abTEM (optional extra ``[multislice]``).

:func:`simulate_multislice` takes the arguments of :func:`~.simulation.simulate` and
returns the same :class:`~.simulation.GroundTruth` (same cells, labels, sites, boxes),
but the image is a real multislice calculation instead of the fast incoherent model:

* **Structure.** The 2H monolayer in 3D: M atoms at the mid-plane, the two X atoms of each
  chalcogen column at +-d/2 along the beam (d = X-X vertical separation,
  :data:`CHALCOGEN_SEPARATION_A`). ``V_X1`` removes one of the two atoms of a column,
  chosen at random on the beam-entrance or the exit side (recorded in the ground truth's
  ``params["x1_missing_layer"]``); ``V_X2`` both; ``V_M`` the metal.
* **Potential.** abTEM's independent-atom (Lobato) potential, sampled at 0.05 Å, with
  one slice per atomic plane (3 slices, thickness d/2). 0.05 Å is the coarsest sampling
  whose anti-aliasing limit (2/3 of Nyquist: 278 mrad at 80 kV) still covers the
  paper's 277.9 mrad outer detector angle.
* **Probe and detector.** ``abtem.Probe`` (80 kV, 27 mrad by default; defocus,
  C3 and two-fold astigmatism from :class:`~.simulation.Optics`), one multislice run per
  probe position, ``abtem.AnnularDetector`` 70-277.9 mrad.
* **Thermal diffuse scattering.** Frozen phonons: every atom is displaced by a Gaussian
  of rms :data:`THERMAL_SIGMA_A` per direction, ``frozen_phonons`` configurations are
  averaged (0: a static lattice).
* **Sampling of probe positions.** A HAADF image is band-limited: its spectrum stops at
  twice the aperture radius, 2 alpha / lambda (the probe enters bilinearly). So the probe is
  scanned on a grid finer than that Nyquist step (lambda / (4 alpha) = 0.39 Å at 27 mrad,
  80 kV; default 0.9 of it), not at every output pixel, and the image is
  interpolated exactly to the requested pixels by its Fourier series. To make that series
  exact the calculation cell is periodic: the field of view plus a margin
  (:data:`CELL_MARGIN_A`) where the crystal wraps around, and the whole cell is scanned.
  The effective source (``Optics.source_fwhm_a``) is a Gaussian filter applied to
  that series. Row jitter is evaluated exactly (each scan row at its shifted positions);
  drift shears the structure like in the fast model.
* **Tiles.** The multislice of one probe position runs in a small periodic box
  (12 Å, ``_TILE_BOX_A``) cut out of the cell around a tile of probe positions, with
  at least 3.5 Å of crystal between every position and the box edge. The cost per
  position drops with the square of the box size; the price is the probe's Airy tails
  wrapping around the smaller box: against a 30.5 Å whole-cell run the signal differs by
  0.7 % rms (2.7 % at most) of the brightest column's, without bias; moving the whole
  calculation by half a potential pixel changes it by as much (potential
  discretisation). ``tests/test_multislice.py`` checks it.
* **Normalisation and noise** mean the same as in the fast model: the noise-free image is
  scaled so that the noise-free peak of an isolated brightest column (X2 or M, from two
  extra single-column multislice runs) is 1, then :func:`~.simulation.apply_noise` adds
  the same kinds of noise with the same meaning of lambda and mu. The source blur lowers
  that reference peak by the factor it lowers the probe's peak.

Cost (one CPU thread): see ``docs/multislice.md``.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, replace
from typing import Callable, Sequence

import numpy as np
from scipy.spatial import cKDTree

from .materials import CHALCOGENS, CLASS_VACANCIES, METALS, Material
from .runtime import check_cancel
from .simulation import (
    Boundary,
    Distortion,
    Noise,
    Optics,
    SimulatedImage,
    Vacuum,
    _domain_lattice,
    _ground_truth,
    _params_dict,
    _prepare_scene,
    _Scene,
    apply_noise,
    electron_wavelength,
    place_defects,
    place_species,
    probe_kernel,
)

__all__ = [
    "CELL_MARGIN_A",
    "CHALCOGEN_SEPARATION_A",
    "THERMAL_SIGMA_A",
    "nyquist_scan_step",
    "require_abtem",
    "simulate_multislice",
]

#: Vertical X-X distance (Å) inside one chalcogen column of the monolayer
#: (relaxed monolayers, e.g. Ding et al., Physica B 406, 2254 (2011); C2DB).
CHALCOGEN_SEPARATION_A: dict[str, float] = {
    "MoS2": 3.13,
    "MoSe2": 3.34,
    "MoTe2": 3.60,
    "WS2": 3.14,
    "WSe2": 3.35,
}

#: Room-temperature rms thermal displacement per direction (Å) used by the frozen
#: phonons (Debye-Waller B = 8 pi² sigma² ~ 0.25-0.45 Å², typical of TMD refinements).
THERMAL_SIGMA_A: dict[str, float] = {
    "Mo": 0.060,
    "W": 0.055,
    "S": 0.070,
    "Se": 0.070,
    "Te": 0.075,
}

#: Crystal (Å) around the field of view inside the periodic calculation cell.
CELL_MARGIN_A = 4.0
#: Edge (Å) of the periodic box of one tile, and the least crystal (Å) between a probe
#: position and that box's edge.
_TILE_BOX_A = 12.0
_TILE_MARGIN_A = 3.5
#: Cells up to this size (Å) run as one periodic box, without tiles.
_SINGLE_BOX_MAX_A = 14.0
#: Probe positions per abTEM call (memory ~ batch x box pixels x 8 bytes).
_BATCH = 16
#: Default potential sampling, Å.
_POTENTIAL_SAMPLING_A = 0.05
#: Default probe step as a fraction of the Nyquist step lambda / (4 alpha).
_SCAN_FRACTION = 0.9

_INSTALL_HINT = (
    "the multislice model needs abTEM and ASE, which are not installed: "
    "install the [multislice] extra (pip install 'napari-tmd-defects[multislice]')"
)


def require_abtem():
    """Import abTEM (and ASE) or raise an ImportError that says how to install them."""
    try:
        import abtem
        import ase  # noqa: F401
    except ImportError as exc:
        raise ImportError(_INSTALL_HINT) from exc
    return abtem


def nyquist_scan_step(optics: Optics | None = None) -> float:
    """Largest probe step (Å) that samples a HAADF image without aliasing, lambda / (4 alpha)."""
    optics = optics or Optics()
    return electron_wavelength(optics.voltage_kv) / (4.0 * optics.convergence_mrad * 1e-3)


def _max_detector_angle(voltage_kv: float, sampling_a: float) -> float:
    """Largest scattering angle (mrad) abTEM keeps at a potential sampling (2/3 of Nyquist)."""
    return 2.0 / 3.0 * electron_wavelength(voltage_kv) / (2.0 * sampling_a) * 1e3


# --------------------------------------------------------------------------- structure
def _cell_atoms(
    scene: _Scene,
    margin: float,
    random_labels: bool,
    defect_fraction: float,
    class_weights: Sequence[float] | None,
    separation: float,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray, tuple[float, float], list]:
    """Atoms of the periodic calculation cell.

    Returns positions (N, 3) in Å (x = image column direction, y = row direction, z along
    the beam with the entrance surface at small z), atomic numbers (N,), the cell size
    ``(Lx, Ly)`` Å and ``[[i, j, "entrance" | "exit"], ...]`` for every V_X1 column.
    Cell coordinates: image pixel ``(x, y)`` is at ``((x + 0.5) p + m, (y + 0.5) p + m)``
    with ``m = margin`` Å.
    """
    mat = scene.material
    ps = scene.pixel_size
    h, w = scene.shape
    lx, ly = w * ps + 2 * margin, h * ps + 2 * margin
    # cells out to the cell's edge and beyond (the scene's lattice stops ~5 Å outside)
    ext, ext_dom, _ = _domain_lattice(
        mat, scene.shape, ps, scene.rotation_deg, scene.origin, scene.boundaries,
        margin + 3.0 * mat.a, scene.drift,
    )
    dom = scene.cell_domain if scene.cell_domain is not None else np.zeros(len(scene.lattice.ij), np.int64)
    known = {(int(d), *ij): int(lab) for d, ij, lab in zip(dom, scene.lattice.ij.tolist(), scene.render_labels)}
    labels = np.array([known.get((int(d), *ij), -1) for d, ij in zip(ext_dom, ext.ij.tolist())], dtype=np.int64)
    extra = labels < 0
    if random_labels:
        labels[extra] = place_defects(int(extra.sum()), defect_fraction, class_weights, rng)
    else:
        labels[extra] = 0
    # the atoms of an alloy or doped layer: the scene's where it has them, drawn for the rest
    comp = scene.composition
    species = None
    if comp is not None and not comp.is_binary:
        known_sp = {(int(d), *ij): (int(mz), tuple(int(z) for z in xz)) for d, ij, mz, xz in
                    zip(dom, scene.lattice.ij.tolist(), scene.m_z, scene.x_z)}
        m_z, x_z = place_species(comp, labels, rng)
        for k, (d, ij) in enumerate(zip(ext_dom, ext.ij.tolist())):
            got = known_sp.get((int(d), *ij))
            if got is not None:
                m_z[k], x_z[k] = got[0], got[1]
        species = (m_z, x_z)

    def to_cell(p):
        return (np.asarray(p, float) + 0.5) * ps + margin

    # all sites (occupied or not), X first then M, then the boundaries' lone columns
    n = len(ext.ij)
    shared = ext.shared if ext.shared is not None else np.zeros((n, 2), bool)
    lone_xy = ext.lone_xy if ext.lone_xy is not None else np.zeros((0, 2))
    lone_x = ext.lone_is_x if ext.lone_is_x is not None else np.zeros(0, bool)
    xy = np.concatenate([to_cell(ext.x_site), to_cell(ext.m_site), to_cell(lone_xy)])
    is_x = np.r_[np.ones(n, bool), np.zeros(n, bool), lone_x]
    cell_of = np.r_[np.arange(n), np.arange(n), np.full(len(lone_xy), -1)]
    drawn = np.r_[~shared[:, 0], ~shared[:, 1], np.ones(len(lone_xy), bool)]
    ok = (xy[:, 0] >= 0) & (xy[:, 0] < lx) & (xy[:, 1] >= 0) & (xy[:, 1] < ly) & drawn
    idx = np.flatnonzero(ok)
    # where the crystal wraps around, drop sites closer than 0.6 bond to a kept one
    tree = cKDTree(xy[idx], boxsize=(lx, ly))
    drop = set()
    for a, b in sorted(tree.query_pairs(0.6 * mat.bond_length)):
        if a not in drop:
            drop.add(b)
    idx = np.array([k for i, k in enumerate(idx) if i not in drop], dtype=np.int64)

    vac = np.asarray(CLASS_VACANCIES, dtype=np.int64)[labels]  # (n, 2): missing X, missing M
    t = separation / 2.0  # slice thickness: one slice per atomic plane
    z_in, z_mid, z_out = 0.5 * t, 1.5 * t, 2.5 * t
    pos, num, x1 = [], [], []
    for k in idx:
        c = cell_of[k]
        x, y = xy[k]
        if c < 0:  # a boundary column of no whole cell: full
            pos.extend([(x, y, z_in), (x, y, z_out)] if is_x[k] else [(x, y, z_mid)])
            num.extend([mat.z_chalcogen] * 2 if is_x[k] else [mat.z_metal])
            continue
        if species is not None:  # alloy or doped: the atoms drawn for this cell
            if is_x[k]:
                for z, zl in zip(species[1][c], (z_in, z_out)):
                    if z > 0:
                        pos.append((x, y, zl))
                        num.append(int(z))
                if vac[c, 0] == 1:
                    x1.append([int(ext.ij[c, 0]), int(ext.ij[c, 1]), "entrance" if species[1][c][0] == 0 else "exit"])
            elif species[0][c] > 0:
                pos.append((x, y, z_mid))
                num.append(int(species[0][c]))
            continue
        if is_x[k]:
            missing = vac[c, 0]
            if missing == 0:
                layers = (z_in, z_out)
            elif missing == 1:
                side = "entrance" if rng.random() < 0.5 else "exit"
                layers = (z_out,) if side == "entrance" else (z_in,)
                x1.append([int(ext.ij[c, 0]), int(ext.ij[c, 1]), side])
            else:
                layers = ()
            for z in layers:
                pos.append((x, y, z))
                num.append(mat.z_chalcogen)
        elif not vac[c, 1]:
            pos.append((x, y, z_mid))
            num.append(mat.z_metal)
    return np.array(pos, float).reshape(-1, 3), np.array(num, np.int64), (lx, ly), x1


def _thermal_sigmas(mat: Material, numbers: np.ndarray, thermal_sigma_a: float | None) -> np.ndarray:
    if thermal_sigma_a is not None:
        return np.full(len(numbers), float(thermal_sigma_a))
    sig = {mat.z_metal: THERMAL_SIGMA_A[mat.metal], mat.z_chalcogen: THERMAL_SIGMA_A[mat.chalcogen]}
    sym = {z: e for e, z in {**METALS, **CHALCOGENS}.items()}
    # other species: their own value where known, else the host's of their sublattice
    return np.array([sig.get(int(z), THERMAL_SIGMA_A.get(sym.get(int(z), ""),
                    sig[mat.z_chalcogen] if int(z) in CHALCOGENS.values() else sig[mat.z_metal]))
                     for z in numbers], float)


def _configurations(positions, sigmas, n_configs, t, rng) -> list[np.ndarray]:
    """Frozen-phonon configurations: Gaussian displacements, atoms kept inside their slice."""
    if n_configs == 0:
        return [positions]
    out = []
    for _ in range(n_configs):
        p = positions + rng.normal(size=positions.shape) * sigmas[:, None]
        # never move an atom into a neighbouring slice (|dz| << t/2 anyway)
        p[:, 2] = np.clip(p[:, 2], np.floor(positions[:, 2] / t) * t + 0.01, np.ceil(positions[:, 2] / t) * t - 0.01)
        out.append(p)
    return out


# --------------------------------------------------------------------------- multislice
class _Runner:
    """abTEM calls for one optics / potential setting (boxes of a fixed size share FFT plans)."""

    def __init__(self, abtem, optics: Optics, separation: float, sampling: float):
        import ase

        self.abtem, self.ase = abtem, ase
        self.optics = optics
        self.t = separation / 2.0
        self.sampling = sampling
        self.detector = abtem.AnnularDetector(
            inner=float(optics.detector_mrad[0]), outer=float(optics.detector_mrad[1])
        )

    def probe(self, potential):
        o = self.optics
        probe = self.abtem.Probe(
            energy=o.voltage_kv * 1e3,
            semiangle_cutoff=o.convergence_mrad,
            C10=o.defocus_a,
            C12=o.astigmatism_a,
            phi12=math.radians(o.astigmatism_deg),
            C30=o.cs_mm * 1e7,
        )
        probe.grid.match(potential)
        return probe

    def signal(self, positions, numbers, box: tuple[float, float], gpts: tuple[int, int], probe_xy):
        """Mean detector signal (fraction of the incident beam) at ``probe_xy`` (K, 2) Å."""
        atoms = self.ase.Atoms(
            numbers=numbers, positions=positions, cell=[box[0], box[1], 3 * self.t], pbc=True
        )
        potential = self.abtem.Potential(
            atoms, gpts=gpts, slice_thickness=self.t, projection="infinite"
        )
        built = potential.build()
        probe = self.probe(potential)
        probe_xy = np.asarray(probe_xy, float).reshape(-1, 2)
        n = len(probe_xy)
        # equal batches (one FFT plan per batch shape), at most _BATCH positions each
        n_batch = max(1, math.ceil(n / _BATCH))
        size = math.ceil(n / n_batch)
        padded = np.concatenate([probe_xy, np.repeat(probe_xy[-1:], n_batch * size - n, axis=0)])
        out = np.empty(n_batch * size)
        for k in range(0, len(padded), size):
            scan = self.abtem.CustomScan(padded[k : k + size])
            meas = probe.scan(built, scan=scan, detectors=self.detector)
            out[k : k + size] = np.asarray(meas.array, float).reshape(-1)
        return out[:n]


def _atoms_in_box(
    positions: np.ndarray, numbers: np.ndarray, cell: tuple[float, float], origin, box: float
) -> tuple[np.ndarray, np.ndarray]:
    """Periodic images of the cell's atoms inside the square box ``[origin, origin + box)``.

    Returns positions relative to the box origin (Å) and their atomic numbers.
    """
    lx, ly = cell
    kx = np.arange(-int(math.ceil(box / lx)) - 1, int(math.ceil(box / lx)) + 2)
    ky = np.arange(-int(math.ceil(box / ly)) - 1, int(math.ceil(box / ly)) + 2)
    shifts = np.stack(np.meshgrid(kx * lx, ky * ly, indexing="ij"), -1).reshape(-1, 2)
    p = positions[None, :, :2] + shifts[:, None, :] - np.asarray(origin, float)
    inside = (p[..., 0] >= 0) & (p[..., 0] < box) & (p[..., 1] >= 0) & (p[..., 1] < box)
    s_idx, a_idx = np.nonzero(inside)
    return np.concatenate([p[s_idx, a_idx], positions[a_idx, 2:]], axis=1), numbers[a_idx]


def _fft_size(n: int) -> int:
    """Smallest integer >= n whose only prime factors are 2, 3, 5 and 7 (fast FFTs)."""
    n = max(int(n), 1)
    while True:
        m = n
        for f in (2, 3, 5, 7):
            while m % f == 0:
                m //= f
        if m == 1:
            return n
        n += 1


def _tiles_1d(n: int, step: float, box: float, margin: float) -> list[tuple[int, int]]:
    per = max(1, int(math.floor((box - 2 * margin) / step + 1e-9)) + 1)
    return [(i, min(i + per, n)) for i in range(0, n, per)]


def _scan_cell(
    runner: _Runner,
    configs: list[np.ndarray],
    numbers: np.ndarray,
    cell: tuple[float, float],
    n_scan: tuple[int, int],
    progress: Callable[[int, int], None] | None,
    cancel: Callable[[], bool] | None,
) -> np.ndarray:
    """HAADF signal on the periodic scan grid ``(ny, nx)`` of the cell, averaged over configs."""
    lx, ly = cell
    nx, ny = n_scan
    sx, sy = lx / nx, ly / ny
    dx = runner.sampling
    img = np.zeros((ny, nx))
    if lx <= _SINGLE_BOX_MAX_A and ly <= _SINGLE_BOX_MAX_A:
        # small cell: one periodic box, no tiles
        gpts = (_fft_size(math.ceil(lx / dx)), _fft_size(math.ceil(ly / dx)))
        gx, gy = np.meshgrid(np.arange(nx) * sx, np.arange(ny) * sy, indexing="xy")
        probe_xy = np.stack([gx.ravel(), gy.ravel()], axis=1)
        for c, pos in enumerate(configs):
            check_cancel(cancel)
            p = pos.copy()
            p[:, 0] %= lx
            p[:, 1] %= ly
            img += runner.signal(p, numbers, (lx, ly), gpts, probe_xy).reshape(ny, nx)
            if progress:
                progress(c + 1, len(configs))
        return img / len(configs)

    g = int(round(_TILE_BOX_A / dx))
    box = g * dx
    tx = _tiles_1d(nx, sx, box, _TILE_MARGIN_A)
    ty = _tiles_1d(ny, sy, box, _TILE_MARGIN_A)
    total, done = len(tx) * len(ty) * len(configs), 0
    for y0, y1 in ty:
        for x0, x1 in tx:
            # box centred on this tile's probe positions, its origin on the potential grid
            # of the cell (every atom then sits at the same sub-pixel offset in every tile)
            ox = round((0.5 * (x0 + x1 - 1) * sx - box / 2) / dx) * dx
            oy = round((0.5 * (y0 + y1 - 1) * sy - box / 2) / dx) * dx
            gx, gy = np.meshgrid(np.arange(x0, x1) * sx - ox, np.arange(y0, y1) * sy - oy, indexing="xy")
            probe_xy = np.stack([gx.ravel(), gy.ravel()], axis=1)
            acc = np.zeros(len(probe_xy))
            for pos in configs:
                check_cancel(cancel)
                xyz, num = _atoms_in_box(pos, numbers, cell, (ox, oy), box)
                acc += runner.signal(xyz, num, (box, box), (g, g), probe_xy)
                done += 1
                if progress:
                    progress(done, total)
            img[y0:y1, x0:x1] = (acc / len(configs)).reshape(y1 - y0, x1 - x0)
    return img


def _isolated_peaks(
    runner: _Runner, mat: Material, sigmas: dict[int, float], n_configs: int, rng: np.random.Generator
) -> dict[str, float]:
    """Noise-free peak signal of an isolated X2 and an isolated M column (no source blur)."""
    dx = runner.sampling
    g = int(round(_TILE_BOX_A / dx))
    box = g * dx
    c = box / 2
    t = runner.t
    cols = {
        "X2": (np.array([[c, c, 0.5 * t], [c, c, 2.5 * t]]), np.array([mat.z_chalcogen] * 2)),
        "M": (np.array([[c, c, 1.5 * t]]), np.array([mat.z_metal])),
    }
    out = {}
    for name, (pos, num) in cols.items():
        sig = np.array([sigmas[int(z)] for z in num])
        vals = [
            runner.signal(p, num, (box, box), (g, g), np.array([[c, c]]))[0]
            for p in _configurations(pos, sig, n_configs, t, rng)
        ]
        out[name] = float(np.mean(vals))
    return out


# --------------------------------------------------------------------------- resampling
def _fourier_sample(
    img: np.ndarray,
    cell: tuple[float, float],
    xs: np.ndarray,
    ys: np.ndarray,
    blur_sigma_a: float = 0.0,
) -> np.ndarray:
    """Evaluate the periodic, band-limited image ``img`` (ny, nx odd) of a cell at points.

    ``ys`` (h,) are row positions (Å); ``xs`` is (w,) (the same columns in every row) or
    (h, w) (per-row positions, e.g. scan jitter). ``blur_sigma_a`` applies a Gaussian
    filter (sigma, Å). Returns (h, w).
    """
    ny, nx = img.shape
    lx, ly = cell
    coef = np.fft.fft2(img) / (nx * ny)
    kx = np.fft.fftfreq(nx, lx / nx)
    ky = np.fft.fftfreq(ny, ly / ny)
    if blur_sigma_a > 0:
        coef = coef * np.exp(-2.0 * math.pi**2 * blur_sigma_a**2 * (kx[None, :] ** 2 + ky[:, None] ** 2))
    ey = np.exp(2j * math.pi * np.asarray(ys, float)[:, None] * ky[None, :])
    g = ey @ coef  # (h, nx)
    xs = np.asarray(xs, float)
    if xs.ndim == 1:
        return (g @ np.exp(2j * math.pi * kx[:, None] * xs[None, :])).real
    out = np.empty(xs.shape)
    for r in range(xs.shape[0]):
        out[r] = (np.exp(2j * math.pi * xs[r][:, None] * kx[None, :]) @ g[r]).real
    return out


def _odd(n: float) -> int:
    k = int(math.ceil(n - 1e-9))
    return k if k % 2 else k + 1


# --------------------------------------------------------------------------- public
def simulate_multislice(
    material: str | Material = "MoTe2",
    shape: int | tuple[int, int] = 128,
    pixel_size: float = 0.1,
    rotation_deg: float = 0.0,
    defect_fraction: float = 0.1,
    class_weights: Sequence[float] | None = None,
    labels: np.ndarray | None = None,
    optics: Optics | None = None,
    noise: Noise | None = None,
    distortion: Distortion | None = None,
    origin: tuple[float, float] | None = None,
    seed: int | None = 0,
    vacuum: Vacuum | None = None,
    boundaries: Sequence[Boundary] = (),
    frozen_phonons: int = 4,
    scan_sampling: float | None = None,
    potential_sampling: float | None = None,
    thermal_sigma_a: float | None = None,
    cell_margin_a: float = CELL_MARGIN_A,
    progress: Callable[[int, int], None] | None = None,
    cancel: Callable[[], bool] | None = None,
) -> SimulatedImage:
    """Multislice (abTEM) HAADF-STEM image with the same ground truth as :func:`~.simulation.simulate`.

    Parameters
    ----------
    material, shape, pixel_size, rotation_deg, defect_fraction, class_weights, labels, \
optics, noise, distortion, origin, seed, vacuum, boundaries
        As in :func:`~.simulation.simulate` (``optics.z_exponent`` is not used: the
        contrast comes from the multislice). The same arguments give the same ground truth.
    frozen_phonons : int
        Number of frozen-phonon configurations averaged (0: static lattice).
    scan_sampling : float, optional
        Probe step in Å; at most :func:`nyquist_scan_step` (default 0.9 of it).
    potential_sampling : float, optional
        Potential (and wave) sampling in Å; must keep the detector's outer angle inside
        abTEM's anti-aliasing limit. Default 0.05 Å (enough at 80 kV for 277.9 mrad), finer
        where the voltage needs it (0.042 Å at 100 kV).
    thermal_sigma_a : float, optional
        One rms displacement (Å) for every atom instead of :data:`THERMAL_SIGMA_A`.
    cell_margin_a : float
        Crystal (Å) around the field of view in the periodic cell; where it wraps around,
        the structure is cut, so columns within a few Å of the image edge see a slightly
        wrong neighbourhood when it is small (default :data:`CELL_MARGIN_A`).
    progress, cancel
        ``progress(done, total)`` over the multislice runs; ``cancel()`` returning True
        raises :class:`~.runtime.Cancelled`.

    Returns
    -------
    SimulatedImage
        Grey levels where the noise-free peak of an isolated brightest column is 255.
        ``truth.params`` has ``model="multislice"``, the multislice settings, the seconds
        it took and ``x1_missing_layer``: ``[i, j, "entrance" | "exit"]`` for each
        V_X1 column of the ground truth's cells.

    Raises
    ------
    ImportError
        abTEM is not installed (install the ``[multislice]`` extra).
    """
    abtem = require_abtem()
    optics = optics or Optics()
    noise = noise if noise is not None else Noise()
    distortion = distortion or Distortion()
    if int(frozen_phonons) != frozen_phonons or frozen_phonons < 0:
        raise ValueError(f"frozen_phonons must be a non-negative integer, got {frozen_phonons}")
    frozen_phonons = int(frozen_phonons)
    nyq = nyquist_scan_step(optics)
    step = _SCAN_FRACTION * nyq if scan_sampling is None else float(scan_sampling)
    if not 0.0 < step <= nyq:
        raise ValueError(
            f"scan_sampling must lie in (0, {nyq:.3f}] Å (the Nyquist step lambda/(4 alpha)), got {scan_sampling}"
        )
    if potential_sampling is None:
        # the default, or finer where the voltage needs it to keep the detector's outer angle
        potential_sampling = min(_POTENTIAL_SAMPLING_A, 0.95 * 2.0 / 3.0 * electron_wavelength(optics.voltage_kv)
                                 / (2.0 * optics.detector_mrad[1] * 1e-3))
    if not 0.005 <= potential_sampling <= 0.2:
        raise ValueError(f"potential_sampling must lie in [0.005, 0.2] Å, got {potential_sampling}")
    theta_max = _max_detector_angle(optics.voltage_kv, potential_sampling)
    if optics.detector_mrad[1] > theta_max:
        raise ValueError(
            f"potential_sampling {potential_sampling} Å keeps scattering only up to {theta_max:.1f} mrad, "
            f"below the detector's outer angle {optics.detector_mrad[1]} mrad; use a finer sampling"
        )
    if thermal_sigma_a is not None and not 0.0 <= thermal_sigma_a < 0.5:
        raise ValueError(f"thermal_sigma_a must lie in [0, 0.5) Å, got {thermal_sigma_a}")
    if not 1.0 <= cell_margin_a <= 20.0:
        raise ValueError(f"cell_margin_a must lie in [1, 20] Å, got {cell_margin_a}")

    t_start = time.perf_counter()
    scene = _prepare_scene(
        material, shape, pixel_size, rotation_deg, defect_fraction, class_weights, labels,
        distortion, origin, seed, vacuum, boundaries,
    )
    mat, ps = scene.material, scene.pixel_size
    h, w = scene.shape
    rng_struct, rng_phonon = (np.random.default_rng(s) for s in scene.seed_seq.spawn(2))
    sep = CHALCOGEN_SEPARATION_A[mat.name]
    positions, numbers, cell, x1 = _cell_atoms(
        scene, cell_margin_a, labels is None, defect_fraction, class_weights, sep, rng_struct
    )
    sig = _thermal_sigmas(mat, numbers, thermal_sigma_a)
    sig_by_z = {mat.z_metal: float(_thermal_sigmas(mat, np.array([mat.z_metal]), thermal_sigma_a)[0]),
                mat.z_chalcogen: float(_thermal_sigmas(mat, np.array([mat.z_chalcogen]), thermal_sigma_a)[0])}
    configs = _configurations(positions, sig, frozen_phonons, sep / 2.0, rng_phonon)
    n_scan = (_odd(cell[0] / step), _odd(cell[1] / step))

    import dask

    with abtem.config.set({"dask.lazy": False, "diagnostics.progress_bar": False, "fftw.threads": 1}), \
            dask.config.set(scheduler="synchronous"):
        runner = _Runner(abtem, optics, sep, potential_sampling)
        raw = _scan_cell(runner, configs, numbers, cell, n_scan, progress, cancel)
        peaks = _isolated_peaks(runner, mat, sig_by_z, max(frozen_phonons, 8) if frozen_phonons else 0, rng_phonon)

    # image pixel (x, y) sits at ((x + 0.5) p + m, (y + 0.5) p + m) in the cell
    ys = (np.arange(h) + 0.5) * ps + cell_margin_a
    if np.any(scene.row_offsets):
        xs = (np.arange(w)[None, :] - scene.row_offsets[:, None] + 0.5) * ps + cell_margin_a
    else:
        xs = (np.arange(w) + 0.5) * ps + cell_margin_a
    blur = optics.source_fwhm_a / (2.0 * math.sqrt(2.0 * math.log(2.0)))
    signal = _fourier_sample(raw, cell, xs, ys, blur)
    # the source blur lowers an isolated column's peak by the factor it lowers the probe's
    blur_factor = 1.0
    if optics.source_fwhm_a > 0:
        blur_factor = float(probe_kernel(optics, 0.02).max() / probe_kernel(replace(optics, source_fwhm_a=0.0), 0.02).max())
    reference = max(peaks.values()) * blur_factor
    clean = signal / reference
    image = apply_noise(clean, noise, scene.rng_noise, ps)

    inside = {tuple(ij) for ij in scene.lattice.ij.tolist()}
    params = _params_dict(
        model="multislice",
        seed=seed,
        defect_fraction=defect_fraction,
        class_weights=None if class_weights is None else list(class_weights),
        optics=optics,
        noise=noise,
        distortion=distortion,
        vacuum=vacuum,
        boundaries=[asdict(b) for b in scene.boundaries],
        multislice={
            "code": f"abTEM {abtem.__version__}",
            "frozen_phonons": frozen_phonons,
            "thermal_sigma_A": {mat.metal: sig_by_z[mat.z_metal], mat.chalcogen: sig_by_z[mat.z_chalcogen]},
            "chalcogen_separation_A": sep,
            "potential_sampling_A": potential_sampling,
            "slices": 3,
            "scan_step_A": [cell[0] / n_scan[0], cell[1] / n_scan[1]],
            "scan_positions": int(n_scan[0] * n_scan[1]),
            "cell_A": [round(cell[0], 4), round(cell[1], 4)],
            "cell_margin_A": cell_margin_a,
            "atoms": int(len(numbers)),
            "isolated_peak_signal": peaks,
            "reference_signal": reference,
            "seconds": round(time.perf_counter() - t_start, 2),
        },
    )
    truth = _ground_truth(scene, params)
    gt_cells = {tuple(ij) for ij in truth.cell_ij.tolist()}
    truth.params["x1_missing_layer"] = [r for r in x1 if (r[0], r[1]) in gt_cells and (r[0], r[1]) in inside]
    return SimulatedImage(image=image, clean=clean.astype(np.float32), truth=truth)
