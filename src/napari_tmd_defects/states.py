"""Per-site states read from column intensities: vacant, host, substituent, or unresolved.

Every metal (M) site is read as *vacant*, one of the composition's metals (host, alloy
partner, dopant), or an unexpected *heavier* / *lighter* substituent with an effective Z;
every chalcogen (X) column as its atoms: how many (0, 1, 2) and which (``SeSe``, ``SSe``,
``S`` ...). The reading compares the column's intensity (:attr:`~.sites.Sites.height`,
above the hollow background) with the levels the states would give:

1. **Levels.** A state's level is ``k · S(state)`` with ``S`` the calibrated HAADF signal of
   the column's atoms relative to the host's (:mod:`.zcontrast`, from multislice: not a
   fixed Z²) and ``k`` the host column's intensity, one per sublattice and domain.
2. **Fit.** ``k``, the state fractions and the noise (the spread of the frame's own
   columns) are fitted by EM to the
   column intensities, started from every candidate for the dominant level, the best
   likelihood kept; the composition's fractions are a prior, open ones (``x``) are fitted
   and reported; an open chalcogen alloy's one level is named with the help of the metal
   columns (:data:`METAL_RATIO_SIGMA`), or its species are not read; an open metal
   alloy's most common metal is named once per frame (:func:`_open_metal_mode`), or its
   metal columns read ``metal?``. The noise grows with
   the signal (:data:`FLAT_NOISE_SHARE`; a chalcogen column's far less,
   :data:`CHALCOGEN_FLAT_NOISE_SHARE`); a metal column is at least as noisy as the frame's
   fitted empty columns (a light dopant's dim column is not a confident vacancy where the
   empty columns spread as far). Chalcogen levels sit on the
   fitted empty column's level, whose uncertainty the posteriors average over, and the
   fit says how many columns miss atoms, not how they split between one and two. On a
   mixed chalcogen sublattice with given shares (``WS1.4Se0.6``) the empty level is the
   intercept of the full columns' levels against their signals (a blurred frame raises
   it far off zero, and its few empty columns alone cannot place it), and the posteriors
   keep at least the composition's share of columns missing atoms: where the full
   columns' spread hides one- and no-atom columns, those read ``unresolved``. A mixed
   column (``SSe``) stands 3-7 % above or below its level as its lighter or heavier atom
   faces the beam (:func:`~.zcontrast.chalcogen_order_split`): that split widens its
   level, and where it is the most common column the fitted noise leaves it out.
3. **Decision.** A site gets the most probable state if its posterior is at least
   :data:`MIN_POSTERIOR`, else ``unresolved``; in an alloy or doped layer, whose
   vacancies the reading alone counts, a chalcogen column short of atoms, and a vacant
   metal site of a layer listing a light (3d) metal, need :data:`MIN_VACANCY_POSTERIOR`
   (the faintest columns, a few counts at low dose: there the posteriors' Gaussian levels
   are least true); a one-atom chalcogen column also needs its
   level :data:`MIN_STEP_SIGMAS` from the others. A site whose intensity fits no candidate
   (beyond :data:`OUTLIER_SIGMAS`) is an unexpected substituent, its effective Z from the
   calibrated signal. A metal column cut flat by the image's ceiling (an 8-bit or
   auto-contrast export, :func:`clipped_share`; needs the image) shows only a lower bound
   of its intensity: a state brighter than the most common column is as likely anywhere
   between that column's level and its own (or the highest cut column's), and the column
   gets no effective Z where it stands below its state's level. Where the chalcogen
   columns' cores reach the ceiling in part (noise carries some of their pixels above it;
   :data:`MIN_DECLIP_MEDIAN_SHARE`), each gets back the mean the ceiling cut off, from the
   frame's pixel noise (:func:`declipped_heights`); the metal columns do not (on low-dose
   WSe2:Cr frames the correction overshot the W columns and a Cr site read vacant).
4. **Detection limits.** For every state, the chance that a host site is read as it (false
   positives) and that one of it is read correctly give, with Currie's limit
   ``L_D = 2.71 + 4.65 sqrt(B)`` over the frame's host sites, the minimum detectable
   number, fraction and concentration (cm⁻²) of that state in this frame; a state that the
   noise cannot separate from the host at all is ``undetectable``.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .materials import CHALCOGENS, METALS, Composition, get_material, parse_composition
from .sites import ROLE_M, ROLE_X, SiteModel

__all__ = [
    "MIN_POSTERIOR",
    "MIN_VACANCY_POSTERIOR",
    "OUTLIER_SIGMAS",
    "SiteStates",
    "clipped_share",
    "clipping_ceiling",
    "declipped_heights",
    "head_reads",
    "read_site_states",
]

#: A site's state is called only at this posterior probability or above.
MIN_POSTERIOR = 0.95
#: In an alloy or doped layer the reading alone counts the vacancies (a binary's are the
#: classifier's, checked by the reading). Where the columns are faintest, a chalcogen
#: column short of atoms, and a vacant metal site of a layer listing a light metal
#: (:data:`HEAD_MIN_METAL_Z`: a 3d metal's column is 10-15 % of a W column's, near the
#: empty column's level), the state is called only at this posterior or above: at a few
#: counts per column the Gaussian levels the posteriors assume are least true, and
#: low-dose frames put a few percent of such calls between 0.95 and 0.98, wrong
#: (docs/reports/site_states.md).
MIN_VACANCY_POSTERIOR = 0.98
#: A column this many noise sigmas from every candidate level fits no listed species.
OUTLIER_SIGMAS = 5.0
#: For an alloy or doped layer the posteriors widen every level's variance by this factor:
#: its many levels come from a calibration and a fit, not from the frame's exact physics
#: (channelling, probe tails), and an
#: overconfident call is worse than an unresolved one. (A binary's two or three levels are
#: far apart and the classifier reads its cells; there the factor is 1.)
POSTERIOR_VARIANCE_FACTOR = 1.5
#: Range of the fitted contrast exponent on the species' signal ratios.
GAMMA_RANGE = (0.5, 2.0)
#: Contrast exponents with which a fit names an open metal alloy's most common metal at no
#: cost (:func:`_open_metal_mode`): the calibrated W/Mo column ratio (2.0) within a factor
#: 1.35 down and 1.8 up. Fits naming the right host of simulated (Mo,W)S2 frames gave
#: 0.72-1.33 (one blurred frame 0.53); those naming W on a real Mo-rich frame 0.50.
NAMING_GAMMA_RANGE = (0.6, 1.8)
#: ... outside it, a fit pays this (nats) per site it gives the other metals.
NAMING_GAMMA_PENALTY = 2.0
#: An empty column's level is fitted (within this range, host units) once this many sites
#: read as empty.
MIN_EMPTY_SITES = 3
EMPTY_LEVEL_RANGE = (-0.25, 0.3)
#: On a mixed chalcogen sublattice (S and Se, shares given) the empty column's level is the
#: intercept of the full columns' levels against their signals (:func:`_offset_levels`),
#: known from hundreds of columns instead of a handful of empty ones: it may stand up to
#: this high (host units; a blurred frame raises every column by its neighbours' tails)
MIXED_EMPTY_LEVEL_MAX = 0.6
#: ... once at least two full-column states each hold this many sites (posterior weight)
MIN_LEVEL_SITES = 5.0
#: Prior share of columns that fit no state (a flat component of the mixture).
OUTLIER_SHARE = 0.01
#: Fewer sites than this in a domain: it shares the fit of the whole frame.
MIN_SITES_PER_FIT = 30
#: An image is clipped (an 8-bit or auto-contrast export) where at least this share of
#: its pixels sits at its maximum (within :data:`CLIP_TOLERANCE` of the range); an
#: unclipped frame's maximum is a single noise spike.
MIN_CLIPPED_SHARE = 1e-3
#: Pixels within this share of the image's range (1st percentile to maximum) below the
#: maximum count as clipped (JPEG ringing leaves a clipped plateau a few grey levels low).
CLIP_TOLERANCE = 0.03
#: A column's core: the pixels within this radius (lattice constants a, at least 2 px) of
#: its site.
CLIP_RADIUS_A = 0.12
#: A column is cut flat where at least this share of its core sits at the ceiling: its
#: height is then a lower bound of its intensity (less cut, the height still follows the
#: intensity and the fitted contrast exponent absorbs the compression).
MIN_CLIPPED_CORE_SHARE = 0.9
_ZSYM = {z: e for e, z in {**METALS, **CHALCOGENS}.items()}


@dataclass
class SiteStates:
    """The state of every site of a :class:`~.sites.SiteModel` (arrays aligned with its sites).

    Attributes
    ----------
    state : (S,) object
        State name: metal sites the element (``"W"``), ``"vacant"``, ``"heavier"`` or
        ``"lighter"`` (an unlisted substituent); chalcogen sites the column's atoms
        (``"SeSe"``, ``"SSe"``, ``"Se"`` one atom, ``"vacant"``); ``"unresolved"`` where the
        noise does not allow a call of how many atoms stand there; ``"metal?"``,
        ``"1 atom?"``, ``"2 atoms?"`` where the number is clear but the species is not
        (e.g. Nb and Mo, Z 41 and 42).
    atoms : (S,) int
        Atoms in the column (M: 0/1, X: 0/1/2); -1 where unresolved.
    z_eff : (S,) float
        Effective atomic number of a metal column from its intensity (NaN on X sites and
        where not measurable).
    probability : (S,) float
        Posterior probability of the most probable listed state (species included: Nb and
        Mo columns cannot be told apart, so neither gets a high one).
    count_probability : (S,) float
        Posterior probability of the site's number of atoms (what the cell classes need);
        a site is ``unresolved`` where it is below :data:`MIN_POSTERIOR`.
    empty_probability : (S,) float
        Posterior probability that the column is empty (a vacant metal site, a chalcogen
        column with no atom).
    level : (S,) float
        Intensity relative to the host column of the site's sublattice and domain.
    host : dict
        Host species per role (``{"M": "W", "X": "SeSe"}``).
    sigma : dict
        Fitted relative noise of a host column per role.
    fractions : dict
        Fitted share of each state per role over the sites read (the composition the
        image shows).
    detection_limits : dict
        Per role and state: minimum detectable number, fraction of sites and
        concentration (cm⁻²) in this frame, or ``"undetectable"``.
    notes : list of str
        Plain-language findings (e.g. the M/X ratio does not fit the material).
    """

    state: np.ndarray
    atoms: np.ndarray
    z_eff: np.ndarray
    probability: np.ndarray
    level: np.ndarray
    count_probability: np.ndarray = field(default_factory=lambda: np.zeros(0))
    empty_probability: np.ndarray = field(default_factory=lambda: np.zeros(0))
    host: dict[str, str] = field(default_factory=dict)
    sigma: dict[str, float] = field(default_factory=dict)
    fractions: dict[str, dict[str, float]] = field(default_factory=dict)
    detection_limits: dict[str, dict[str, Any]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    #: per role: the grey level one W atom would give on that sublattice (k / host signal);
    #: the two agree when the material (or its composition) fits the image
    w_atom_level: dict[str, float] = field(default_factory=dict)
    #: fitted exponent on the calibrated metal signal ratios (1: as calibrated)
    contrast_exponent: float = 1.0
    #: per role: the fitted level of an empty column relative to the host column (0 on a
    #: sharp frame; blur and the neighbours' tails raise it), from the largest group's fit
    empty_level: dict[str, float] = field(default_factory=dict)
    #: (S,) bool: the core of the site's column is cut flat by the image's clipping
    #: ceiling (an 8-bit or auto-contrast export, :data:`MIN_CLIPPED_CORE_SHARE`): its
    #: intensity is a lower bound; no effective Z where it stands below its state's level
    clipped: np.ndarray = field(default_factory=lambda: np.zeros(0, bool))

    @classmethod
    def empty(cls, n: int = 0) -> "SiteStates":
        return cls(np.full(n, "unresolved", object), np.full(n, -1), np.full(n, np.nan), np.zeros(n),
                   np.full(n, np.nan), np.zeros(n), np.zeros(n), clipped=np.zeros(n, bool))

    @property
    def unresolved(self) -> np.ndarray:
        return self.state == "unresolved"

    def off_host(self, role: np.ndarray) -> np.ndarray:
        """Sites whose state is not the host's of their sublattice (``role`` per site)."""
        host = np.where(np.asarray(role) == ROLE_X, self.host.get("X", ""), self.host.get("M", ""))
        return self.state.astype(str) != host

    def to_dict(self) -> dict[str, Any]:
        return {"host": self.host, "noise_relative": {k: round(v, 4) for k, v in self.sigma.items()},
                "contrast_exponent": self.contrast_exponent,
                "fractions": self.fractions, "detection_limits": self.detection_limits,
                "clipped_metal_columns": int(np.sum(self.clipped))}


@dataclass
class _Candidates:
    names: list[str]
    signal: np.ndarray  # relative to the host column
    atoms: np.ndarray
    prior: np.ndarray  # expected share (composition), sums to 1
    #: share of the host column's noise variance that does not grow with the signal
    flat: float = 0.3
    #: levels on an offset: ``empty + (1 - empty) · signal`` with the fitted empty level
    offset: bool = False
    #: an empty column's fitted spread stays at least this share of the flat noise
    #: (``σ_host √f``, the noise at zero signal): a handful of empty sites can look tighter
    empty_floor: float = 0.5
    #: the fit says how many columns miss atoms, the prior how they split between the
    #: states that miss some (a frame's handful of them cannot: where their levels overlap,
    #: the EM lets one state swallow the other and its calls become overconfident)
    split_missing: bool = False
    #: several full-column species in shares the composition fixes (a mixed chalcogen
    #: sublattice such as S1.4Se0.6): the empty level is fitted from the full columns'
    #: levels (:func:`_offset_levels`) and the posteriors keep at least the prior's share of
    #: columns missing atoms (:func:`_missing_floor`). Not for open shares (``x``): their
    #: fit may split one species' spread into two levels, whose line says nothing of the
    #: empty column
    empty_from_levels: bool = False
    #: a column's noise is at least the empty columns' fitted spread, rising to the host's
    #: at its level (the metal sublattice: the flat noise a fixed share
    #: :data:`FLAT_NOISE_SHARE` gives is too small on low-dose, blurred frames, where a
    #: light (3d) substituent's column then reads as a confident vacancy)
    empty_noise_floor: bool = False
    #: per state, the relative half-difference of its own signal between the two orders of
    #: its atoms along the beam (a mixed chalcogen pair, :func:`~.zcontrast.chalcogen_order_split`;
    #: 0 for the others): the columns of that state stand at ``(1 ± δ)`` of its level, read
    #: as extra variance ``(k δ S)²``; None: none
    order_split: np.ndarray | None = None


def _metal_candidates(comp: Composition, host_z: int, kv: float) -> _Candidates:
    from .zcontrast import metal_signal

    names, zs, prior = ["vacant"], [0], [0.02]
    d_tot = sum((0.03 if f is None else f) for _, f in comp.dopants)
    for m, f in comp.shares(comp.metals).items():
        names.append(m)
        zs.append(METALS[m])
        prior.append(f * (1.0 - d_tot))
    for d, f in comp.dopants:
        if d in names:
            continue
        names.append(d)
        zs.append(METALS[d])
        prior.append(0.03 if f is None else f)
    sig = np.array([0.0 if z == 0 else float(metal_signal(z, kv)) for z in zs]) / float(metal_signal(host_z, kv))
    p = np.maximum(np.array(prior, float), 1e-3)
    return _Candidates(names, sig, np.array([0] + [1] * (len(zs) - 1)), p / p.sum(), empty_noise_floor=True)


def _chalcogen_candidates(comp: Composition, host_z: int, kv: float, ref: int | None = None) -> _Candidates:
    """Chalcogen column states; levels relative to the host's full column, or to the state
    ``ref`` (an index into the states, a full column: an open alloy's most common one)."""
    from .zcontrast import chalcogen_order_split, chalcogen_signal

    species = [(x, CHALCOGENS[x], f) for x, f in comp.shares(comp.chalcogens).items()]
    species.sort(key=lambda t: t[1])
    names, sig, atoms, prior, split = ["vacant"], [0.0], [0], [0.01], [0.0]
    for x, z, f in species:  # one atom left
        names.append(x)
        sig.append(float(chalcogen_signal(0, z, kv)))
        atoms.append(1)
        prior.append(0.03 * f)
        split.append(0.0)
    for i, (x1, z1, f1) in enumerate(species):
        for x2, z2, f2 in species[i:]:
            names.append(x1 + x2)
            sig.append(float(chalcogen_signal(z1, z2, kv)))
            atoms.append(2)
            prior.append(f1 * f2 * (1 if x1 == x2 else 2))
            split.append(float(chalcogen_order_split(z1, z2, kv)))
    ref_signal = sig[ref] if ref is not None else float(chalcogen_signal(host_z, host_z, kv))
    p = np.maximum(np.array(prior, float), 1e-3)
    return _Candidates(names, np.array(sig) / ref_signal, np.array(atoms), p / p.sum(), CHALCOGEN_FLAT_NOISE_SHARE,
                       offset=True, empty_floor=1.0, split_missing=True,
                       empty_from_levels=len(species) > 1 and all(f is not None for _, f in comp.chalcogens),
                       order_split=np.array(split) if any(split) else None)


def _main_state(cand: _Candidates, w: np.ndarray) -> int:
    """The most common full column state of a fit (weights ``w``)."""
    return int(np.argmax(w * (cand.atoms == cand.atoms.max())))


def _most_common(cand: _Candidates, w: np.ndarray) -> int:
    """The most common state of a fit (weights ``w``) that is not empty."""
    return int(np.argmax(w * (cand.signal > 0)))


def _gauss_logpdf(h: np.ndarray, mu: np.ndarray, var: np.ndarray) -> np.ndarray:
    return -0.5 * ((h[:, None] - mu[None]) ** 2 / var[None] + np.log(2 * math.pi * var[None]))


def _loglik(h: np.ndarray, mu: np.ndarray, var: np.ndarray, clipped: np.ndarray | None = None,
            lo: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Log-likelihood of every site (rows) under every state (columns), and the distance
    (noise sigmas) of each site from each state's level.

    A clipped column (``clipped``) of a state brighter than ``lo`` (the most common
    column's level) cannot show its level: the ceiling cuts it down to anywhere between
    ``lo`` and its own level or the highest clipped column's (whichever is lower), so its
    likelihood there is flat (with Gaussian edges, normalised), not a Gaussian about a
    level the image could not reach.
    """
    lp = _gauss_logpdf(h, mu, var)
    z = np.abs(h[:, None] - mu[None]) / np.sqrt(var)[None]
    if clipped is None or lo is None or not np.any(clipped):
        return lp, z
    up = np.flatnonzero(mu > lo)
    if not len(up):
        return lp, z
    rows = np.flatnonzero(clipped)
    hc = h[rows][:, None]
    hi = np.minimum(mu[up], max(float(hc.max()), lo))[None]
    d = np.maximum(np.maximum(lo - hc, hc - hi), 0.0)
    sd = np.sqrt(var[up])[None]
    lp[np.ix_(rows, up)] = -np.log(hi - lo + math.sqrt(2 * math.pi) * sd) - 0.5 * (d / sd) ** 2
    z[np.ix_(rows, up)] = d / sd
    return lp, z


#: Noise of a metal column relative to the host's: ``σ²(S) = σ_host² (f + (1 - f) S)``,
#: with ``f`` the share that does not grow with the signal (read-out, background, scan noise).
FLAT_NOISE_SHARE = 0.3
#: The same for a chalcogen column. A chalcogen column's height is a small signal on the
#: tails of its three metal neighbours and on the hollow background, and at low dose, with
#: blur and 8-bit exports, its scatter hardly depends on its own atoms: on simulated frames
#: (paper, realistic and hard presets) one- and no-atom columns spread by 0.6-1.4 times
#: the full ones, and the brighter metal columns by about as much in grey levels. A
#: one-atom column is read against noise as large as a full column's (a smaller one made
#: columns half-way between the levels confident one-atom calls).
CHALCOGEN_FLAT_NOISE_SHARE = 0.5
#: A one-atom chalcogen state is read only where its level stands at least this many
#: noise sigmas (pooled over the two levels) from every level with another number of
#: atoms (as :data:`.pipeline.MIN_LEVEL_SIGMAS` for the classifier's calls): closer, a
#: frame's heavy tails (contamination, a misplaced column) and a blurred empty column's
#: raised level make its calls unreliable whatever the posterior says.
MIN_STEP_SIGMAS = 3.0


def _var(k: float, sd_host: float, signal: np.ndarray, flat: float = FLAT_NOISE_SHARE) -> np.ndarray:
    """Variance of every candidate level (grey levels²), see :data:`FLAT_NOISE_SHARE`."""
    return (sd_host * k) ** 2 * (flat + (1.0 - flat) * np.maximum(signal, 0.0))


def _signal(cand: _Candidates, vac: tuple[float, float] | None = None) -> np.ndarray:
    """Every state's level relative to the host column. With ``cand.offset`` the levels sit
    on the empty column's (``vac[0]``): what raises an empty column (the tails of the
    neighbours, blur, the background) raises every column of the sublattice alike, so a
    one-atom column lies ``empty + (1 - empty) · S`` (the host stays at 1)."""
    sig = np.asarray(cand.signal, float)
    if cand.offset and vac is not None:
        sig = np.where(sig > 0, vac[0] + (1.0 - vac[0]) * sig, sig)
    return sig


def _order_spread(cand: _Candidates, vac: tuple[float, float] | None = None) -> np.ndarray:
    """Per state, the spread (relative to the host level) its columns' two orders along the
    beam add: ``δ`` times the state's own signal (above the empty column's level)."""
    if cand.order_split is None:
        return np.zeros(len(cand.names))
    own = np.maximum(np.asarray(cand.signal, float), 0.0)
    if cand.offset and vac is not None:
        own = own * (1.0 - vac[0])
    return cand.order_split * own


#: Quantile of the absolute residuals that :func:`_split_sigma` matches: the median's is
#: flat in ``σ`` where the split is about as large as the noise, the 80th percentile's is not
SPLIT_QUANTILE = 0.8


def _split_sigma(res: np.ndarray, d: float) -> float:
    """The noise ``σ`` of residuals ``±d + σ ε`` (the two orders of a mixed column along the
    beam, equally common; ``ε`` standard normal) from their absolute values' quantile
    :data:`SPLIT_QUANTILE` ``q``: the root of ``Φ((q_r - d)/σ) + Φ((q_r + d)/σ) = 1 + q``;
    at least 0.3 of the spread that leaves the split out (``1.4826 · median |res|``: the
    calibrated split may be larger than the frame's)."""
    from scipy.special import ndtr

    a = np.abs(np.asarray(res, float))
    floor = 0.3 * 1.4826 * float(np.median(a))
    m = float(np.quantile(a, SPLIT_QUANTILE))
    target = 1.0 + SPLIT_QUANTILE
    lo, hi = floor, 2.0 * m
    if not (m > 0 and floor > 0) or ndtr((m - d) / lo) + ndtr((m + d) / lo) <= target:
        return floor
    for _ in range(40):  # the left side falls as σ grows
        mid = 0.5 * (lo + hi)
        if ndtr((m - d) / mid) + ndtr((m + d) / mid) > target:
            lo = mid
        else:
            hi = mid
    return 0.5 * (lo + hi)


def _levels(k: float, sd: float, cand: _Candidates, vac: tuple[float, float] | None = None):
    """Mean and variance (grey levels) of every candidate state. ``vac = (level, sd)`` of an
    empty column relative to the host (fitted from the frame: blur, contamination and the
    background leave it off zero); None: 0 and the flat noise."""
    sig = _signal(cand, vac)
    mu, var = k * sig, _var(k, sd, sig, cand.flat)
    var = var + (k * _order_spread(cand, vac)) ** 2
    if vac is not None:
        if cand.empty_noise_floor:
            f0 = min(vac[1] ** 2, sd**2)
            floor = f0 + (sd**2 - f0) * np.clip(sig, 0.0, 1.0)
            var = np.maximum(var, k**2 * floor)
        empty = cand.signal <= 0
        mu = np.where(empty, k * vac[0], mu)
        var = np.where(empty, (k * vac[1]) ** 2, var)
    return mu, var


def _unresolvable(k: float, sd: float, cand: _Candidates, vac=None) -> np.ndarray:
    """Per state: a chalcogen column state short of full and not empty (one atom) whose
    level lies closer than :data:`MIN_STEP_SIGMAS` to a level with another number of atoms."""
    out = np.zeros(len(cand.names), bool)
    if not cand.split_missing:
        return out
    mu, var = _levels(k, sd, cand, vac)
    for s in np.flatnonzero((cand.atoms > 0) & (cand.atoms < cand.atoms.max())):
        other = cand.atoms != cand.atoms[s]
        step = np.abs(mu[other] - mu[s]) / np.sqrt(0.5 * (var[other] + var[s]))
        out[s] = bool(np.any(step < MIN_STEP_SIGMAS))
    return out


def _with_gamma(cand: _Candidates, gamma: float, ref: float = 1.0) -> _Candidates:
    """The candidates with their signal ratios to ``ref`` (the frame's most common level)
    raised to ``γ``: that level stays where the data put it, the others move."""
    sig = np.where(cand.signal > 0, ref * (np.maximum(cand.signal, 1e-12) / ref) ** gamma, 0.0)
    return dataclasses.replace(cand, signal=sig)


def _fit(h: np.ndarray, cand0: _Candidates, host: int, fixed_fractions: bool, fit_gamma: bool = False,
         n_iter: int = 40, clipped: np.ndarray | None = None, mode_state: int | None = None,
         split_noise: bool = True):
    """EM fit of ``k`` (host level), the state fractions, the host column's relative noise
    and (``fit_gamma``) a contrast exponent ``γ`` on the species' signal ratios: at most
    ``n_iter`` steps, fewer where a step returns its parameters unchanged.

    ``γ`` (:data:`GAMMA_RANGE`) absorbs a detector or voltage whose Z-contrast differs
    from the calibration; it is fitted (by the marginal likelihood, gently held at 1) only
    where the composition lists two present species on the sublattice, on the ratios to the
    most common level. Returns ``(k, sd_host, weights, loglik, γ, vacant level, candidates
    with γ applied)``; every candidate (non-vacant) state is tried as the frame's most common
    level, the best likelihood kept. ``clipped`` sites are as likely anywhere a brighter
    state could be cut down to (:func:`_loglik`). ``split_noise``: where the most common
    state is a mixed pair, its columns' order along the beam is left out of the host noise
    (:func:`_split_sigma`); False: the noise is their whole spread.
    """
    h = np.asarray(h, float)
    if len(h) == 0:
        return 1.0, 0.1, cand0.prior.copy(), -np.inf, 1.0, (0.0, 0.05), cand0
    # the most common level (a histogram peak of the upper 90 %)
    top = h[h > np.percentile(h, 10)]
    hist, edges = np.histogram(top, bins=max(10, min(60, len(top) // 10)))
    mode = float(0.5 * (edges[hist.argmax()] + edges[hist.argmax() + 1]))
    mode = mode if mode > 0 else float(np.median(h))
    near = np.abs(h - mode) < 0.25 * abs(mode)
    width = 1.4826 * float(np.median(np.abs(h[near] - mode))) if near.sum() > 5 else 0.1 * abs(mode)
    span = float(np.ptp(h)) or 1.0
    log_flat = math.log(OUTLIER_SHARE / span)
    best = None
    full = cand0.atoms == cand0.atoms.max()
    for s in range(len(cand0.names)):
        if cand0.signal[s] <= 0 or (cand0.split_missing and not full[s]) or mode_state not in (None, s):
            continue  # (chalcogens: most columns of a layer are full)
        gamma, cand = 1.0, cand0
        k = mode / cand.signal[s]
        if k <= 0:
            continue
        w = cand.prior.copy()
        flat = cand0.flat
        sd = max(width / k / math.sqrt(flat + (1 - flat) * cand.signal[s]), 0.01)
        vac = (0.0, sd * math.sqrt(flat))
        if cand0.offset:
            # blur can raise the empty columns far off zero: start their level where the
            # frame's lowest columns (below half a one-atom column) stand
            low = h[h < 0.5 * k * float(np.min(cand0.signal[cand0.signal > 0]))]
            if len(low) >= MIN_EMPTY_SITES:
                vac = (float(np.clip(np.median(low) / k, *EMPTY_LEVEL_RANGE)), vac[1])
        ll = -np.inf
        for _ in range(n_iter):
            # the parameters this step starts from: where the step returns them unchanged
            # (bit for bit) the fit has reached its fixed point and every further step
            # would repeat this one
            before = (k, sd, w.copy(), vac, cand.signal.copy())
            mu, var = _levels(k, sd, cand, vac)
            lp = _loglik(h, mu, var, clipped, float(mu[_most_common(cand, w)]))[0] + np.log(np.maximum(w, 1e-12))[None]
            # a flat component takes what fits no state (contamination, a stray column)
            lp = np.concatenate([lp, np.full((len(h), 1), log_flat)], axis=1)
            m = lp.max(axis=1, keepdims=True)
            post = np.exp(lp - m)
            tot = post.sum(axis=1, keepdims=True)
            ll = float(np.sum(m[:, 0] + np.log(tot[:, 0])))
            post = (post / tot)[:, :-1]
            # M step: k by weighted least squares, the fractions, the noise (robust: the
            # spread of the sites read as the host)
            wt = post / var[None]
            sig = _signal(cand, vac)
            den = float(np.sum(wt * sig[None] ** 2))
            if den > 0:
                k = max(float(np.sum(wt * h[:, None] * sig[None])) / den, 1e-9)
            reg = _offset_levels(h, post, var, cand) if cand0.empty_from_levels else None
            if reg is not None:
                k = reg[0]
            free = (post.sum(axis=0) + 2.0 * cand.prior) / (post.sum() + 2.0)
            if fixed_fractions:
                # the composition fixes the species' shares among full columns; how many
                # columns miss atoms is the frame's to say
                full = cand.atoms == cand.atoms.max()
                w = np.where(full, cand.prior / max(cand.prior[full].sum(), 1e-12) * free[full].sum(), free)
            else:
                w = free
            if cand0.split_missing:
                miss = cand.atoms < cand.atoms.max()
                # no preference between one and two missing atoms; the species by the prior
                share = np.zeros(len(w))
                for n_at in np.unique(cand.atoms[miss]):
                    sel = cand.atoms == n_at
                    share[sel] = cand.prior[sel] / max(cand.prior[sel].sum(), 1e-12)
                share[miss] /= len(np.unique(cand.atoms[miss]))
                w = np.where(miss, share * w[miss].sum(), w)
            w = w / w.sum()
            empty = cand.signal <= 0
            pv = post[:, empty].sum(axis=1)
            if pv.sum() >= MIN_EMPTY_SITES:  # the empty column's own level and spread
                m_v = float(np.sum(pv * h) / pv.sum()) / k
                s_v = math.sqrt(float(np.sum(pv * (h - m_v * k) ** 2) / pv.sum())) / k
                vac = (float(np.clip(m_v, *EMPTY_LEVEL_RANGE)),
                       float(np.clip(s_v, cand0.empty_floor * sd * math.sqrt(flat), 0.25)))
            else:
                vac = (0.0, sd * math.sqrt(flat))
            if reg is not None:
                vac = (reg[1], vac[1])
            best_state = post.argmax(axis=1)
            main = _most_common(cand, w)
            at = best_state == main
            if at.sum() > 5:
                s_main = _signal(cand, vac)[main]
                shape = flat + (1.0 - flat) * s_main
                # the host's noise without its columns' order along the beam (a mixed pair)
                d_main = float(_order_spread(cand, vac)[main])
                if d_main > 0 and split_noise:
                    spread = _split_sigma((h[at] - k * s_main) / k, d_main)
                else:
                    spread = 1.4826 * float(np.median(np.abs(h[at] - k * s_main))) / k
                sd = max(spread / math.sqrt(shape), 0.01)
            if fit_gamma and np.sum(cand0.signal > 0) >= 2:
                # the marginal likelihood over γ (a species the current γ misplaces sits in
                # the flat component, so the complete-data one would not move it)
                gammas = np.linspace(*GAMMA_RANGE, 61)
                ref = float(cand0.signal[_most_common(cand0, w)])  # the most common level
                q = []
                for g in gammas:
                    cg = _with_gamma(cand0, g, ref)
                    lg = _gauss_logpdf(h, *_levels(k, sd, cg, vac)) + np.log(np.maximum(w, 1e-12))[None]
                    lg = np.concatenate([lg, np.full((len(h), 1), log_flat)], axis=1)
                    mg = lg.max(axis=1)
                    q.append(float(np.sum(mg + np.log(np.exp(lg - mg[:, None]).sum(axis=1)))) - 5.0 * (g - 1.0) ** 2)
                gamma = float(gammas[int(np.argmax(q))])
                cand = _with_gamma(cand0, gamma, ref)
            if (k == before[0] and sd == before[1] and np.array_equal(w, before[2]) and vac == before[3]
                    and np.array_equal(cand.signal, before[4])):
                break
        score = ll + (len(h) * math.log(max(w[host], 1e-3)) if host >= 0 and w[host] < 0.05 else 0.0)
        if cand0.split_missing and w[~full].sum() > 0.5:
            # most columns missing atoms: not the layer (a fit that floated the empty and
            # one-atom levels up to the full columns'), the last resort only
            score = -np.inf if best is None else best[3] - 1.0
        if best is None or score > best[3]:
            best = (k, sd, w, score, gamma, vac, cand)
    return best


def _missing_floor(w: np.ndarray, cand: _Candidates) -> np.ndarray:
    """The fitted shares ``w`` with at least the composition prior's share of columns
    missing atoms (split among them as fitted). On a mixed chalcogen sublattice the full
    columns spread over several levels and a one-atom or empty column lies within their
    noise: the fit cannot say how many columns miss atoms (it lets the full columns' tails
    swallow them), and a share fitted near zero would make every low column a confident
    full one."""
    miss = cand.atoms < cand.atoms.max()
    floor = float(cand.prior[miss].sum())
    have = float(w[miss].sum())
    if have >= floor or not miss.any() or miss.all():
        return w
    out = np.asarray(w, float).copy()
    out[miss] = (w[miss] / have if have > 0 else cand.prior[miss] / floor) * floor
    out[~miss] = w[~miss] / max(float(w[~miss].sum()), 1e-12) * (1.0 - floor)
    return out


def _offset_levels(h: np.ndarray, post: np.ndarray, var: np.ndarray, cand: _Candidates):
    """``(k, empty level)`` of a sublattice with several full-column species: the weighted
    least-squares line of the column heights (grey levels) against the states' signals
    (``k · (e + (1 - e) · S)``, an empty column at ``S = 0``): its intercept is the empty
    column's level. None where fewer than two full states hold :data:`MIN_LEVEL_SITES`
    sites (the line would rest on a handful of empty and one-atom columns)."""
    full = cand.atoms == cand.atoms.max()
    if np.sum(full & (post.sum(axis=0) >= MIN_LEVEL_SITES)) < 2:
        return None
    x = np.maximum(np.asarray(cand.signal, float), 0.0)[None]
    wt = post / var[None]
    s0, s1, s2 = float(wt.sum()), float(np.sum(wt * x)), float(np.sum(wt * x**2))
    t0, t1 = float(np.sum(wt * h[:, None])), float(np.sum(wt * h[:, None] * x))
    det = s0 * s2 - s1 * s1
    if not det > 0:
        return None
    slope = (s0 * t1 - s1 * t0) / det
    icept = (t0 - slope * s1) / s0
    k = icept + slope
    if not (slope > 0 and k > 0):
        return None
    return k, float(np.clip(icept / k, EMPTY_LEVEL_RANGE[0], MIXED_EMPTY_LEVEL_MAX))


def _posterior(h: np.ndarray, k: float, sd: float, w: np.ndarray, cand: _Candidates, vac=None,
               widen: float = 1.0, clipped: np.ndarray | None = None, extra_var: np.ndarray | None = None):
    """Posteriors of every site's states and its distance (noise sigmas) from the nearest
    level; ``extra_var`` (per site, grey levels²) widens a site's variance in that distance
    (a measurement's own uncertainty: a column it fits no level of is doubtful, not an
    unlisted substituent), not in the posteriors."""
    mu, var = _levels(k, sd, cand, vac)
    var = var * widen
    extra = 0.0 if extra_var is None else np.asarray(extra_var, float)[:, None]
    z = None
    top = MIXED_EMPTY_LEVEL_MAX if cand.empty_from_levels else EMPTY_LEVEL_RANGE[1]
    if not (cand.offset and vac is not None and top > vac[0]):
        lp, z = _loglik(h, mu, var, clipped, float(mu[_most_common(cand, w)]))
        if extra_var is not None:
            z = z * np.sqrt(var[None] / (var[None] + extra))
        lp = lp + np.log(np.maximum(w, 1e-12))[None]
    else:
        # an empty column's level is known only roughly: what raises it (blur, the tails
        # of the metal neighbours) is fitted from the frame's few empty sites, and those
        # that stand highest are the ones the fit reads as one-atom columns (it is biased
        # low by up to about their spread). Every level from the fitted one to one spread
        # of the empty columns above it is as likely; the levels of the other states move
        # with it (:func:`_signal`), the likelihoods are averaged.
        ll = []
        for v in np.linspace(vac[0], min(vac[0] + vac[1], top), 7):
            mu_v, var_v = _levels(k, sd, cand, (float(v), vac[1]))
            ll.append(_gauss_logpdf(h, mu_v, var_v * widen))
        ll = np.stack(ll)
        m = ll.max(axis=0)
        lp = m + np.log(np.mean(np.exp(ll - m[None]), axis=0)) + np.log(np.maximum(w, 1e-12))[None]
    lp -= lp.max(axis=1, keepdims=True)
    post = np.exp(lp)
    post /= post.sum(axis=1, keepdims=True)
    if z is None:
        z = np.abs(h[:, None] - mu[None]) / np.sqrt(var + extra)
    return post, z.min(axis=1)


def _detection_limits(k, sd_host, w, cand: _Candidates, host: int, n_host: int, area_cm2: float,
                      n_sites: int, vac=None, widen: float = 1.0, min_posterior=None) -> dict[str, Any]:
    """Per state: Currie's minimum detectable number among ``n_host`` host sites, a state
    called at its ``min_posterior`` (per candidate; :data:`MIN_POSTERIOR` for all by default)."""
    mu, var = _levels(k, sd_host, cand, vac)
    sd = np.sqrt(var)
    lo, hi = float(mu.min() - 6 * sd.max()), float(mu.max() + 6 * sd.max())
    grid = np.linspace(lo, hi, 4001)
    post, _ = _posterior(grid, k, sd_host, w, cand, vac, widen)
    dx = grid[1] - grid[0]
    out: dict[str, Any] = {}
    weak = _unresolvable(k, sd_host, cand, vac)
    for s, name in enumerate(cand.names):
        if s == host:
            continue
        if weak[s]:
            out[name] = "undetectable"
            continue
        called = post[:, s] >= (MIN_POSTERIOR if min_posterior is None else min_posterior[s])
        pdf_h = np.exp(-0.5 * (grid - mu[host]) ** 2 / var[host]) / math.sqrt(2 * math.pi * var[host])
        pdf_s = np.exp(-0.5 * (grid - mu[s]) ** 2 / var[s]) / math.sqrt(2 * math.pi * var[s])
        p_fp = float(np.sum(pdf_h[called]) * dx)
        p_d = float(np.sum(pdf_s[called]) * dx)
        if p_d < 0.5:
            out[name] = "undetectable"
            continue
        b = n_host * p_fp
        ld = (2.71 + 4.65 * math.sqrt(b)) / p_d
        out[name] = {"min_detectable_sites": round(ld, 2),
                     "min_detectable_fraction": round(ld / max(n_sites, 1), 5),
                     "min_detectable_cm2": float(f"{ld / area_cm2:.3g}") if area_cm2 > 0 else None,
                     "detection_probability": round(p_d, 4), "false_positive_rate": float(f"{p_fp:.3g}")}
    return out


#: Spread (natural log) of an open chalcogen alloy's column signal against its metal
#: columns' (the calibrated ratio): the Z-contrast exponent (1.6-2.1 on the realistic
#: preset), blur and the detector move it by tens of percent; the pairs SS, SSe, SeSe,
#: STe, TeTe lie a factor >= 1.6 apart (docs/reports/open_alloys.md).
METAL_RATIO_SIGMA = 0.3

#: Radius (lattice constants) of the neighbourhood whose columns set a site's local scale.
LOCAL_RADIUS_A = 3.0


def _ragged_median(values: np.ndarray, index_lists, counts: np.ndarray) -> np.ndarray:
    """``np.median(values[idx])`` for every list of indices (same dtype, same rounding; nan
    for an empty list), in one sort instead of one call per list."""
    n = len(counts)
    if not np.all(np.isfinite(values)):
        return np.array([np.median(values[i]) if len(i) else np.nan for i in index_lists], values.dtype)
    width = max(1, int(counts.max()) if n else 1)
    pad = np.full((n, width), np.inf, dtype=values.dtype)
    if n:
        rows = np.repeat(np.arange(n), counts)
        cols = np.arange(len(rows)) - np.repeat(np.cumsum(counts) - counts, counts)
        pad[rows, cols] = values[np.concatenate([np.asarray(i, np.intp) for i in index_lists])]
    pad.sort(axis=1)
    k = np.arange(n)
    hi = pad[k, np.minimum(counts // 2, width - 1)]
    lo = pad[k, np.maximum((counts - 1) // 2, 0)]
    out = np.where(counts % 2 == 1, hi, (lo + hi) / values.dtype.type(2))
    return np.where(counts > 0, out, np.nan).astype(values.dtype)


#: Sites whose neighbour lists :func:`_local_heights` holds at once (bounds its memory).
_NEIGHBOUR_BLOCK = 4096


def _local_heights(model: SiteModel) -> np.ndarray:
    """Site intensities divided by their neighbourhood's: the median found column of the
    same sublattice and domain within :data:`LOCAL_RADIUS_A` over that of the whole domain
    (thickness, contamination and scan gradients scale whole regions; a column is read
    against its neighbours, as a microscopist reads it)."""
    from scipy.spatial import cKDTree

    s = model.sites
    out = s.height.astype(float).copy()
    r = LOCAL_RADIUS_A * max(model.a_px, 1e-6)
    for d in np.unique(s.domain):
        for role in (ROLE_M, ROLE_X):
            sel = np.flatnonzero((s.domain == d) & (s.role == role))
            ref = sel[~s.placed[sel] & ~s.boundary[sel]]
            if len(ref) < 12:
                continue
            h_ref = s.height[ref]
            med = float(np.median(h_ref))
            if med <= 0:
                continue
            # the neighbour lists (Python lists) a block of sites at a time: each site's
            # median is its own, so the blocks give the same gains without the lists of all
            tree = cKDTree(s.xy[ref])
            n_nb, gain = [], []
            for b0 in range(0, len(sel), _NEIGHBOUR_BLOCK):
                near = tree.query_ball_point(s.xy[sel[b0 : b0 + _NEIGHBOUR_BLOCK]], r)
                n_nb.append(np.array([len(nb) for nb in near], dtype=int))
                gain.append(_ragged_median(h_ref, near, n_nb[-1]))
                del near
            n_nb = np.concatenate(n_nb)
            gain = np.concatenate(gain) / med  # in the heights' dtype
            if not np.all(n_nb >= 6):  # float64 where some sites keep a gain of 1
                gain = np.where(n_nb >= 6, gain.astype(float), 1.0)
            # shrink towards 1 by how much of the gains' spread the noise of a local median
            # explains (a noisy sublattice has no gradient to correct that its noise would not fake)
            spread = 1.4826 * float(np.median(np.abs(h_ref / med - 1.0)))
            se2 = (1.2533 * spread) ** 2 / np.maximum(n_nb, 1)
            var_g = float(np.var(gain[n_nb >= 6])) if np.sum(n_nb >= 6) > 2 else 0.0
            keep = max(0.0, 1.0 - float(np.mean(se2[n_nb >= 6])) / var_g) if var_g > 0 else 0.0
            gain = 1.0 + keep * (gain - 1.0)
            out[sel] = s.height[sel] / np.clip(gain, 0.5, 2.0)
    return out


def clipping_ceiling(image: np.ndarray) -> float | None:
    """The grey level at and above which ``image`` is cut flat: its maximum less
    :data:`CLIP_TOLERANCE` of its range, where at least :data:`MIN_CLIPPED_SHARE` of the
    pixels stand there (an 8-bit or auto-contrast export that cut the brightest columns);
    None otherwise."""
    img = np.asarray(image)
    if img.ndim != 2 or img.size == 0:
        return None
    # the range and the plateau's share from a strided sample of the pixels (no copy of a
    # large frame)
    sample = img.ravel()[:: max(1, img.size // 200_000)].astype(float)
    sample = sample[np.isfinite(sample)]
    if sample.size == 0:
        return None
    top = float(np.nanmax(img))
    floor = float(np.percentile(sample, 1))
    if not top > floor:
        return None
    ceiling = top - CLIP_TOLERANCE * (top - floor)
    if np.count_nonzero(sample >= ceiling) < MIN_CLIPPED_SHARE * sample.size:
        return None
    return ceiling


def clipped_share(image: np.ndarray, model: SiteModel) -> np.ndarray:
    """(S,) float: the share of each site's column core (:data:`CLIP_RADIUS_A`) at the
    image's clipping ceiling (:func:`clipping_ceiling`; 0 where the image is not clipped)."""
    ceiling = clipping_ceiling(image)
    if ceiling is None:
        return np.zeros(len(model.sites))
    return _core_stats(image, model, ceiling)[0]


def _core_stats(image: np.ndarray, model: SiteModel, ceiling: float) -> tuple[np.ndarray, np.ndarray]:
    """Per site: the share of its column core at ``ceiling`` (:func:`clipped_share`) and
    the core's mean grey level."""
    s = model.sites
    out = np.zeros(len(s))
    img = np.asarray(image)
    mean = np.zeros(len(s))
    if img.ndim != 2 or not len(s) or img.size == 0:
        return out, mean
    r = max(2, int(round(CLIP_RADIUS_A * model.a_px)))
    yx = np.round(s.xy[:, ::-1]).astype(int)
    hh, ww = img.shape
    n_px = 0
    for dy in range(-r, r + 1):
        for dx in range(-r, r + 1):
            if dy * dy + dx * dx > r * r:
                continue
            y = np.clip(yx[:, 0] + dy, 0, hh - 1)
            x = np.clip(yx[:, 1] + dx, 0, ww - 1)
            px = img[y, x]
            out += px >= ceiling
            mean += px
            n_px += 1
    return out / n_px, mean / n_px


#: :func:`read_site_states` puts back what the ceiling cut off the chalcogen columns only
#: where their median core reaches it by this share (their full columns cut in part; a few
#: noise pixels at the ceiling in the cores of faint columns on a bright background make
#: corrections that are mostly noise)
MIN_DECLIP_MEDIAN_SHARE = 0.2
#: :func:`declipped_heights`: a core's share at the ceiling is taken as at most this (a
#: core cut flat whole shows only a lower bound, read as such)
MAX_DECLIP_SHARE = 0.9


def _cut_loss(a: np.ndarray) -> np.ndarray:
    """The mean a unit normal loses when cut at ``a`` (its distance above the mean):
    ``φ(a) - a (1 - Φ(a))``."""
    from scipy.special import ndtr

    a = np.asarray(a, float)
    return np.exp(-0.5 * a * a) / math.sqrt(2.0 * math.pi) - a * ndtr(-a)


def declipped_heights(height: np.ndarray, share: np.ndarray, pixel_std: float,
                      background: np.ndarray | None = None, ceiling: float | None = None) -> np.ndarray:
    """Column heights with the mean an export's ceiling cut off put back.

    A core whose pixels scatter by ``pixel_std`` (grey levels) about a mean near the
    ceiling loses the excess of those above it: with a share ``f`` of them at the ceiling
    (a censored normal, ``a = Φ⁻¹(1 - f)``) the mean drops by ``pixel_std · (φ(a) - a f)``
    (0.40 σ at f = 0.5, 1.33 σ at f = 0.9). A height is measured above the local
    background: where that (``background``, grey levels, with the ``ceiling``) lies near
    the ceiling too, what it lost the same way is taken off again (a noisy low-dose frame
    whose hollows reach the ceiling). On 8-bit simulated MoTe2 frames whose full Te
    columns reach the ceiling in part (30-80 % of a core's pixels) they lost up to a
    quarter of their height, so that one-atom columns stood at up to 0.65 of them instead
    of 0.43-0.5, beyond their level's noise: ``unresolved``, their vacancies not counted.
    ``share`` is capped at :data:`MAX_DECLIP_SHARE`.
    """
    from scipy.special import ndtri

    f = np.clip(np.asarray(share, float), 0.0, MAX_DECLIP_SHARE)
    cut = f > 0
    out = np.asarray(height, float).copy()
    if not (cut.any() and pixel_std > 0):
        return out
    out[cut] += pixel_std * _cut_loss(ndtri(1.0 - f[cut]))
    if background is not None and ceiling is not None:
        a_bg = (ceiling - np.asarray(background, float)[cut]) / pixel_std
        out[cut] -= pixel_std * _cut_loss(np.maximum(a_bg, -3.0))
    return out


#: A site-state head is not used for a layer listing a metal lighter than this (Z): it
#: reads light (3d) substituents as vacancies (V, Cr in WSe2 on held-out frames, and a
#: real V-doped WSe2 frame: docs/reports/site_head.md).
HEAD_MIN_METAL_Z = 30
#: Least correlation of a site-state head's reading with the column heights (found,
#: counted sites of each sublattice it reads) for the reading to be used.
MIN_HEAD_AGREEMENT = 0.3


def _lists_light_metal(comp: Composition) -> bool:
    """Whether the layer lists a metal lighter than :data:`HEAD_MIN_METAL_Z` (a 3d metal)."""
    return any(METALS[el] < HEAD_MIN_METAL_Z for el, _ in comp.metals + comp.dopants)


def head_reads(comp: Composition) -> bool:
    """Whether a site-state head reads this layer's metal sites: an alloy or doped layer
    that lists no metal lighter than :data:`HEAD_MIN_METAL_Z` (a binary's cells are the
    classifier's; the head reads light 3d metal columns as vacancies)."""
    return not comp.is_binary and not _lists_light_metal(comp)


def _head_disagrees(signal: np.ndarray, s, use: np.ndarray) -> str | None:
    """Why a site-state head's per-site ``signal`` cannot stand for the heights (a network
    whose output does not follow the image), or None when it can."""
    for role in (ROLE_M, ROLE_X):
        sel = use & (s.role == role) & ~s.placed & ~s.boundary
        if sel.sum() < 10:
            continue
        sig, hgt = signal[sel], s.height[sel].astype(float)
        if not np.all(np.isfinite(sig)) or np.median(sig) <= 0:
            return "non-positive or non-finite column signals"
        r = float(np.corrcoef(sig, hgt)[0, 1]) if np.std(sig) > 0 and np.std(hgt) > 0 else 0.0
        if not r >= MIN_HEAD_AGREEMENT:
            return f"correlation {r:.2f} with the heights, needs {MIN_HEAD_AGREEMENT}"
    return None


def _head_heights(site_head, image: np.ndarray | None, model: SiteModel, comp: Composition):
    """``(heights (S,), extra variance (S,), None, read (S,) bool)`` of the sites with those
    of the head's sublattices (``read``) read by a site-state head (grey levels, grey
    levels²: its uncertainty beyond its sublattice's median), or ``(None, None, note,
    None)`` where the head is not used (a binary or a light metal listed: no note, the
    heights are the reading for those; a reading that does not follow the heights: a note
    says so)."""
    from .sitehead import SiteHead, load_site_head

    if image is None:
        raise ValueError("read_site_states: site_head needs the image")
    head = site_head if isinstance(site_head, SiteHead) else load_site_head(site_head)
    if not head_reads(comp):
        return None, None, None, None
    s = model.sites
    reading = head.read(image, model)
    use = np.isin(s.role, [ROLE_M if r == "M" else ROLE_X for r in head.roles])
    why = _head_disagrees(reading.signal, s, use)
    if why:
        return (None, None, f"the site-state head's reading does not fit the column heights ({why}): read from the "
                "heights", None)
    extra_var = np.zeros(len(s))
    for role in (ROLE_M, ROLE_X):
        sel = use & (s.role == role)
        if sel.any():
            v = (reading.sigma[sel] * reading.scale) ** 2
            extra_var[sel] = np.maximum(v - np.median(v), 0.0)
    return np.where(use, reading.signal * reading.scale, s.height), extra_var, None, use


def _named_share(tried: list, m: int) -> float:
    """Weight (``exp`` of the scores) of the best fit naming state ``m`` the most common,
    against it plus the fits naming another (entries ``(_, score, _, _, most common)``)."""
    own = max((t[1] for t in tried if t[4] == m), default=-math.inf)
    if own == -math.inf:
        return 0.0
    return 1.0 / (1.0 + sum(math.exp(t[1] - own) for t in tried if t[4] != m))


def _open_metal_mode(h: np.ndarray, cand: _Candidates, clipped: np.ndarray | None = None,
                     host_level: float | None = None) -> tuple[int, float, tuple]:
    """The most common metal of a layer whose metal shares are open (``(Mo,W)S2``), the
    weight its fits keep against those naming another, and its fit (as :func:`_fit`
    returns it): ``(state index, share, fit)``.

    Each listed metal is tried as the frame's most common column (EM with a free contrast
    exponent ``γ``), scored by its log-likelihood. A fit whose ``γ`` leaves
    :data:`NAMING_GAMMA_RANGE` puts the other metals at ratios the Z-contrast does not give:
    it pays :data:`NAMING_GAMMA_PENALTY` per site it gives them (a real Cr-W frame whose Cr
    columns stand at 0.36-0.4 of W, ``γ`` 0.58, fits 2352 nats better as W than as Cr, with
    510 Cr sites: W), and one whose ``γ`` stopped at a bound of :data:`GAMMA_RANGE` is
    dropped while another remains (on a Mo-rich frame a "W host" fit squeezes Mo up to 0.7
    of W, ``γ`` 0.5, to take the host's low tail, and leaves the real W columns, 2x
    brighter, as outliers: it fits a real frame 13-44 nats better over 2789 sites, a
    low-dose simulated one 38 nats over 125). The share is the kept fits' (exp of the
    scores): where no metal keeps :data:`MIN_POSTERIOR` of it
    (an end member alone, whose one level any metal fits) the frame cannot name its metal.
    ``host_level``: where the chalcogen columns are one species, the grey level of a column
    of the host metal (``cand`` levels' 1) as their calibrated ratio puts it; each fit's
    score then carries a log-normal prior (σ :data:`METAL_RATIO_SIGMA`) on its own host
    level against it (Mo and W columns stand a factor 2 apart against S2: an end member
    alone is named where the ratio holds).
    """
    tried = []
    full = cand.atoms == cand.atoms.max()
    for st in np.flatnonzero(full):
        f = _fit(h, cand, -1, fixed_fractions=False, fit_gamma=True, mode_state=int(st), clipped=clipped)
        main = _main_state(f[6], f[2])
        minor = float(np.sum(f[2][full & (np.arange(len(cand.names)) != main)])) * len(h)
        score = f[3]
        if not NAMING_GAMMA_RANGE[0] <= f[4] <= NAMING_GAMMA_RANGE[1]:
            score -= NAMING_GAMMA_PENALTY * minor
        own = f[0] * (1.0 - float(np.clip(f[5][0], 0.0, 0.9)))
        if host_level is not None and host_level > 0 and own > 0:
            score -= 0.5 * (math.log(own / host_level) / METAL_RATIO_SIGMA) ** 2
        # γ stopped at a bound of its range: the fit wanted the species closer still
        at_bound = minor >= MIN_LEVEL_SITES and min(abs(f[4] - g) for g in GAMMA_RANGE) < 1e-6
        tried.append((not at_bound, score, f, 0.0, main, int(st)))
    tried = [t for t in tried if t[0]] or tried
    best = max(tried, key=lambda t: t[1])
    return best[5], _named_share(tried, best[4]), best[2]


def read_site_states(model: SiteModel, material: str, cell_area_nm2: float | None = None,
                     voltage_kv: float = 80.0, image: np.ndarray | None = None,
                     site_head=None, noise=None) -> SiteStates:
    """Read every site's state from its column intensity (see the module docstring).

    Parameters
    ----------
    model : SiteModel
        Sites, domains and cells of the frame (heights above the hollow background).
    material : str
        Binary, alloy or doped formula (:func:`~.materials.parse_composition`).
    cell_area_nm2 : float, optional
        Unit-cell area for the detection limits in cm⁻² (default: the material's).
    voltage_kv : float
        Beam energy for the calibrated Z-contrast (80 kV unless known).
    image : (rows, cols) array, optional
        The frame the heights come from: metal columns that reach its clipping ceiling
        (:func:`clipped_share`) are read as at least as bright as they show.
    site_head : SiteHead, str or Path, optional
        An alloy or doped layer: read the states of the head's sublattices from the
        column intensities a site-state head measures in ``image`` (:mod:`.sitehead`; a
        path or ``"default"`` loads one) instead of the heights; the levels, fit and
        posteriors stay as they are, a site whose predicted uncertainty exceeds the
        sublattice's median has the noise widened by the excess where it is tested
        against every level (an outlier is not an unlisted substituent). A binary keeps its
        heights (the classifier reads its cells), and so does a layer listing a light metal
        (:data:`HEAD_MIN_METAL_Z`). Needs ``image``.
    noise : NoiseEstimate, optional
        The frame's pixel noise (:func:`~.noise.estimate_noise` of ``image``): where the
        image is clipped, the heights of chalcogen columns whose cores partly reach the
        ceiling get back the mean it cut off (:func:`declipped_heights`; not where a
        site-state head measured the heights).
    """
    from .zcontrast import chalcogen_signal, effective_z, metal_signal

    s = model.sites
    n = len(s)
    out = SiteStates.empty(n)
    if n == 0:
        return out
    comp = parse_composition(material)
    extra_var = None  # per site: the head's uncertainty beyond its sublattice's median (grey levels²)
    head_read = np.zeros(n, bool)  # sites whose intensity the head measured
    if site_head is not None:
        heights, extra_var, note, used = _head_heights(site_head, image, model, comp)
        if used is not None:
            head_read = used
        if note:
            out.notes.append(note)
        if heights is not None:
            s = dataclasses.replace(s, height=heights)
            model = dataclasses.replace(model, sites=s)
    host = get_material(material)
    area_nm2 = cell_area_nm2 if cell_area_nm2 is not None else host.cell_area_nm2
    counted = ~s.boundary
    widen = 1.0 if comp.is_binary else POSTERIOR_VARIANCE_FACTOR
    # sublattices whose calls short of atoms need MIN_VACANCY_POSTERIOR
    strict = {ROLE_X: not comp.is_binary, ROLE_M: not comp.is_binary and _lists_light_metal(comp)}
    cands = {ROLE_M: _metal_candidates(comp, host.z_metal, voltage_kv),
             ROLE_X: _chalcogen_candidates(comp, host.z_chalcogen, voltage_kv)}
    hosts = {ROLE_M: host.metal, ROLE_X: host.chalcogen * 2}
    host_abs = {ROLE_M: float(metal_signal(host.z_metal, voltage_kv)),
                ROLE_X: float(chalcogen_signal(host.z_chalcogen, host.z_chalcogen, voltage_kv))}
    fixed = all(f is not None for _, f in comp.metals + comp.chalcogens) and all(
        f is not None for _, f in comp.dopants)
    # metal columns cut flat by the export's ceiling show a lower bound of their intensity
    clipped = np.zeros(n, bool)
    if image is not None:
        ceiling = clipping_ceiling(image)
        share, core = _core_stats(image, model, ceiling) if ceiling is not None else (np.zeros(n), None)
        on_x = (s.role == ROLE_X) & ~head_read
        cut_x = np.where(on_x, share, 0.0)
        if (noise is not None and core is not None and np.any(on_x & counted)
                and np.median(share[on_x & counted]) >= MIN_DECLIP_MEDIAN_SHARE):
            # chalcogen columns the ceiling cut partly: their heights with the lost mean put
            # back. Not the metal columns: on low-dose WSe2:Cr frames, whose W columns the
            # ceiling cuts, the correction overshot by up to 12 % and a Cr site read vacant
            # (V_M precision 97.2 %); a metal column cut whole is a lower bound instead.
            # The background under a column is its core's mean less its height
            s = dataclasses.replace(s, height=declipped_heights(s.height, cut_x, noise.pixel_std(ceiling),
                                                                 core - s.height, ceiling))
            model = dataclasses.replace(model, sites=s)
        clipped = (s.role == ROLE_M) & (share >= MIN_CLIPPED_CORE_SHARE)
    out.clipped = clipped
    # a column against its neighbourhood where the neighbourhood's median is the host
    # (a binary); an alloy's local median follows its local composition
    height = _local_heights(model) if comp.is_binary else s.height.astype(float)
    # several species with open fractions on a sublattice: none of them is the host by
    # the formula's order, the image says which is most common
    open_alloy = {role: len(g) > 1 and any(f is None for _, f in g)
                  for role, g in ((ROLE_M, comp.metals), (ROLE_X, comp.chalcogens))}
    # per metal site: the grey level of one W atom's own signal in its fit (the host level
    # less the empty column's, over the calibrated signal)
    w_metal = np.full(n, np.nan)
    # open metal shares: the frame's most common metal, named once for all its domains
    metal_mode, metal_share, metal_fit = None, 1.0, None
    if open_alloy[ROLE_M]:
        sel_m = (s.role == ROLE_M) & counted
        sel_x = (s.role == ROLE_X) & counted
        scale = None  # one chalcogen species: the grey level of its calibrated unit signal
        if len(comp.chalcogens) == 1 and sel_x.sum() >= MIN_SITES_PER_FIT:
            cx = cands[ROLE_X]
            fx = _fit(height[sel_x], cx, cx.names.index(hosts[ROLE_X]), fixed_fractions=True)
            scale = fx[0] * (1.0 - float(np.clip(fx[5][0], 0.0, 0.9))) / host_abs[ROLE_X]
        if sel_m.sum() >= MIN_SITES_PER_FIT:
            metal_mode, metal_share, f = _open_metal_mode(height[sel_m], cands[ROLE_M],
                                                          clipped[sel_m] if clipped.any() else None,
                                                          None if scale is None else scale * host_abs[ROLE_M])
            metal_fit = (sel_m, f)  # the fit a group of these very sites would repeat
    for role, rname in ((ROLE_M, "M"), (ROLE_X, "X")):
        cand0 = cand = cands[role]
        hi = cand.names.index(hosts[role])
        sel_role = s.role == role
        # one fit per domain with enough sites, the rest share the frame's fit
        groups = []
        frame_sel = sel_role & counted
        for d in sorted(set(s.domain[sel_role].tolist())):
            sel = sel_role & (s.domain == d)
            if np.sum(sel & counted) >= MIN_SITES_PER_FIT:
                groups.append((sel, sel & counted))
        rest = sel_role.copy()
        for sel, _ in groups:
            rest &= ~sel
        if rest.any():
            groups.append((rest, frame_sel if np.sum(rest & counted) < MIN_SITES_PER_FIT else rest & counted))
        # the noise model and the empty level's range are in units of the reference column:
        # an open chalcogen alloy's is its most common full column, not the formula's first.
        # Each full column is tried as the reference (and as the most common level). The
        # chalcogen levels alone cannot name a frame's one level (each fit's scale is free:
        # a pure WS2 frame fits as SeSe as well as SS); the metal columns of the same domains
        # can: the kept fit has the best likelihood plus a log-normal prior (σ
        # :data:`METAL_RATIO_SIGMA`) on its column signal against the metal columns' (the
        # calibrated chalcogen/metal ratio). Where the fits naming the most common column
        # otherwise keep 5 % or more of the weight (exp(score)), the species are not read
        # (``2 atoms?``, ``1 atom?``): an end member's one level, or a low-dose frame, often
        # cannot be named. Without metal columns: the best self-consistent fit (its most
        # common column its reference)
        refs = []
        if role == ROLE_X and open_alloy[role]:
            refs = [(int(r), _chalcogen_candidates(comp, host.z_chalcogen, voltage_kv, int(r)))
                    for r in np.flatnonzero(cand0.atoms == cand0.atoms.max())]
        fits = []
        for sel, fit_sel in groups:
            if not fit_sel.any():
                continue
            k_scale = 1.0  # the reference column's signal over the host's
            label_p = 1.0  # probability that the frame's most common column is the one named
            shares = (1.0, 1.0)  # the same with the host noise without and with the split
            tried = []
            w_m = np.nan
            if refs:
                near = (s.role == ROLE_M) & np.isin(s.domain, np.unique(s.domain[sel])) & np.isfinite(w_metal)
                w_m = float(np.median(w_metal[near])) if near.any() else np.nan
            # each hypothesis also fitted with its host noise taken whole (``naive``: where the
            # most common column is a mixed pair, its split left in): on a frame of one full
            # level, a mixed pair's hypothesis with the split taken out of the noise gets a
            # narrower noise for its rarer states too, and its score then names the level on
            # no evidence; the species are read only where both sets of fits name the most
            # common column alike
            naive = []
            for r, cand_r in refs:
                for fits_of in (tried, naive):
                    if fits_of is naive and cand_r.order_split is None:
                        naive.append(tried[-1])
                        continue
                    f = _fit(height[fit_sel], cand_r, -1, fixed_fractions=fixed, mode_state=r if w_m > 0 else None,
                             split_noise=fits_of is tried)
                    own = f[0] * (1.0 - float(np.clip(f[5][0], 0.0, 0.9))) / float(cand0.signal[r]) / host_abs[ROLE_X]
                    prior = -0.5 * (math.log(own / w_m) / METAL_RATIO_SIGMA) ** 2 if (w_m > 0 and own > 0) else 0.0
                    m = _main_state(f[6], f[2])  # the state the fit finds most common
                    fits_of.append((m == r, f[3] + prior, f, float(cand0.signal[r]), m))
            if tried:
                _, _, f, k_scale, m = max(tried, key=(lambda t: t[1]) if w_m > 0 else (lambda t: (t[0], t[1])))
                k, sd_host, w, _, gamma, vac, cand = f
                if w_m > 0:
                    # the fits that name the most common level otherwise, weighed by their scores
                    main = cand.names[m]
                    shares = (_named_share(tried, m), _named_share(naive, m))
                    label_p = min(shares)
            elif role == ROLE_M and metal_fit is not None and np.array_equal(fit_sel, metal_fit[0]):
                k, sd_host, w, _, gamma, vac, cand = metal_fit[1]
            else:
                k, sd_host, w, _, gamma, vac, cand = _fit(height[fit_sel], cand0, -1 if open_alloy[role] else hi,
                                                          fixed_fractions=fixed, fit_gamma=role == ROLE_M,
                                                          clipped=clipped[fit_sel] if clipped.any() else None,
                                                          mode_state=metal_mode if role == ROLE_M else None)
            if cand.empty_from_levels:
                w = _missing_floor(w, cand)
            post, zmin = _posterior(height[sel], k, sd_host, w, cand, vac, widen,
                                    clipped[sel] if clipped.any() else None,
                                    None if extra_var is None else extra_var[sel])
            idx = np.flatnonzero(sel)
            best = post.argmax(axis=1)
            p = post[np.arange(len(idx)), best]
            level = height[sel] / k
            # how many atoms first (what the classes need), then which species
            counts = np.unique(cand.atoms)
            min_post = np.where(strict[role] & (counts < counts.max()), MIN_VACANCY_POSTERIOR, MIN_POSTERIOR)
            p_count = np.stack([post[:, cand.atoms == a].sum(axis=1) for a in counts], axis=1)
            atoms = counts[p_count.argmax(axis=1)]
            p_atoms = p_count.max(axis=1)
            in_count = np.where(cand.atoms[None] == atoms[:, None], post, -1.0)
            names = np.array(cand.names, object)[in_count.argmax(axis=1)]
            # the species within that count: where the posterior cannot choose (Nb and Mo,
            # overlapping mixed columns) the state says how many atoms, not which
            p_species = in_count.max(axis=1) / np.maximum(p_atoms, 1e-12)
            several = np.array([np.sum(cand.atoms == a) > 1 for a in counts])[np.searchsorted(counts, atoms)]
            vague = np.where(role == ROLE_M, "metal?", np.where(atoms == 2, "2 atoms?", "1 atom?"))
            names = np.where(several & (p_species < MIN_POSTERIOR), vague, names).astype(object)
            if role == ROLE_M and metal_share < MIN_POSTERIOR:  # which metal the frame's columns are
                names = np.where(atoms > 0, vague, names).astype(object)
            if label_p < MIN_POSTERIOR:  # which pair the frame's columns are is not settled
                names = np.where(atoms > 0, vague, names).astype(object)
                out.notes.append(
                    f"which chalcogen pair the most common column is cannot be told in this frame (the fit's best, "
                    f"{main}, at {100 * shares[0]:.0f} %, {100 * shares[1]:.0f} % with the mixed columns' split by "
                    "their order along the beam left in the noise: the chalcogen levels leave their scale open and the metal "
                    "columns fix it only to tens of percent): atom counts are read, species are not")
            ok = p_atoms >= min_post[np.searchsorted(counts, atoms)]
            state = np.where(ok, names, "unresolved").astype(object)
            atoms = np.where(ok, atoms, -1)
            floor = vac[0] + 3.0 * vac[1]  # above an empty column's level
            if role == ROLE_M:
                zeff = effective_z(np.maximum(level, 1e-6) ** (1.0 / gamma), host.z_metal, voltage_kv)
                # a column cut flat below its state's level (more than the noise) shows
                # only a lower bound of its intensity
                mu_b, var_b = _levels(k, sd_host, cand, vac)
                cut_low = clipped[sel] & (height[sel] < mu_b[best] - 3.0 * np.sqrt(var_b[best] * widen))
                out.z_eff[idx] = np.where((level > floor) & ~cut_low, zeff, np.nan)
                odd = zmin > OUTLIER_SIGMAS
                state = np.where(odd & (level > cand.signal[hi]), "heavier", state)
                state = np.where(odd & (level < cand.signal[hi]) & (level > floor), "lighter", state)
                atoms = np.where(odd, 1, atoms)
            else:
                # fits no level, or a one-atom state the frame's noise cannot set apart
                weak = _unresolvable(k, sd_host, cand, vac)
                odd = (zmin > OUTLIER_SIGMAS) | (weak[post.argmax(axis=1)] & (atoms >= 0))
                state = np.where(odd, "unresolved", state)
                atoms = np.where(odd, -1, atoms)
            out.state[idx], out.atoms[idx], out.probability[idx], out.level[idx] = state, atoms, p, level
            out.count_probability[idx] = p_atoms
            out.empty_probability[idx] = post[:, cand.atoms == 0].sum(axis=1)
            fits.append((k, sd_host, w, int(fit_sel.sum()), cand, gamma, vac, k_scale))
            if role == ROLE_M:
                w_metal[idx] = k * (1.0 - float(np.clip(vac[0], 0.0, 0.9))) / host_abs[ROLE_M]
        if not fits:
            continue
        # the frame's figures: the largest group's fit
        k, sd_host, w, n_fit, cand, gamma, vac, k_scale = max(fits, key=lambda f: f[3])
        if role == ROLE_M:
            out.contrast_exponent = round(gamma, 3)
        # an open alloy's host is its most common full column, the formula's first otherwise
        out.host[rname] = str(cand.names[_main_state(cand, w)]) if open_alloy[role] else hosts[role]
        if role == ROLE_M and metal_share < MIN_POSTERIOR:
            out.host[rname] = "metal?"
        out.sigma[rname] = sd_host
        out.empty_level[rname] = float(vac[0])
        out.w_atom_level[rname] = k / k_scale / host_abs[role]
        read = sel_role & counted & (out.state != "unresolved")
        names_read = out.state[read]
        out.fractions[rname] = {nm: round(float(np.mean(names_read == nm)), 4) for nm in
                                list(cand.names) + (["heavier", "lighter"] if role == ROLE_M else [])
                                if np.any(names_read == nm)}
        n_sites = int(np.sum(sel_role & counted))
        n_host = int(np.sum(out.state[sel_role & counted] == hosts[role])) or n_sites
        min_post = np.where(strict[role] & (cand.atoms < cand.atoms.max()), MIN_VACANCY_POSTERIOR, MIN_POSTERIOR)
        out.detection_limits[rname] = _detection_limits(k, sd_host, w, cand, hi, n_host,
                                                        n_sites * area_nm2 * 1e-14, n_sites, vac, widen, min_post)
    if metal_share < MIN_POSTERIOR:
        out.notes.append(f"which metal the most common column is cannot be told in this frame (the best fit "
                         f"keeps {100 * metal_share:.0f} % of the weight): its metal columns are read as present "
                         "(metal?) or vacant, not by species")
    n_clip = int(np.sum(clipped & counted))
    if n_clip:
        out.notes.append(f"{n_clip} metal columns are cut flat by the image's ceiling (a clipped export): read as "
                         "at least as bright as they show, no effective Z where they stand below their state's level")
    return out
