"""Site-state head: a small CNN that measures every column's own intensity from a patch.

A site's :attr:`~.sites.Sites.height` is the peak of the smoothed frame at the site: on a
blurred frame it takes in the neighbours' tails (a column next to a vacancy reads lower, a
Mo column next to W higher). The head looks at a patch around each site and regresses the
column's own signal, de-blurred and corrected for its neighbours, with an uncertainty
(Gaussian mean and log-variance). :func:`~.states.read_site_states` can read the states
of an alloy or doped layer from these intensities instead of the heights
(``site_head=``; the shipped head's card reads the metal sublattice only, see its
``evaluation``); its levels, fit, posteriors and ``unresolved`` stay as they are.

Patches (:func:`site_patches`)
    The frame is block-averaged to about :data:`SAMPLES_PER_A` px per lattice constant
    ``a``, then sampled bilinearly on a :data:`PATCH` × :data:`PATCH` grid, axis-aligned,
    :data:`HALF_WIDTH_A` ``a`` to each side of the site (the network learnt every
    rotation). Each patch has its own low level (:data:`BACKGROUND_PERCENTILE`)
    subtracted and is divided by the frame's scale: the mean centre value of its found
    interior metal sites. The network sees relative contrast only (doses, gains and
    offsets cancel).
Output
    Per site the column's signal in units of the frame's mean metal column (a vacant site
    0), and the log-variance of that estimate; the metal and chalcogen sublattices have
    their own outputs.
Training
    ``benchmarks/train_site_head.py`` (fast-model and multislice frames of alloys, dopants,
    mixed chalcogens and binaries; positions from the pipeline's own sites matched to the
    truth); the command, data and scores are in the card ``weights/site_head.json``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .geometry import block_mean
from .runtime import WeightsError, default_weights, load_weights
from .sites import ROLE_M, ROLE_X, SiteModel

__all__ = [
    "HALF_WIDTH_A",
    "PATCH",
    "SAMPLES_PER_A",
    "SiteHead",
    "build_site_head",
    "load_site_head",
    "site_head_weights",
    "site_patches",
]

#: Patch side, samples.
PATCH = 17
#: Half width of a patch, lattice constants (the site's neighbours and theirs).
HALF_WIDTH_A = 1.0
#: The frame is block-averaged to at least this many px per lattice constant before sampling.
SAMPLES_PER_A = 8.0
#: A patch's own low level (this percentile of its samples) is subtracted (contamination,
#: background and detector offset).
BACKGROUND_PERCENTILE = 10.0
#: The centre of a patch: this many samples to each side give the frame's scale.
CENTRE_HALF = 1


def site_patches(image: np.ndarray, model: SiteModel) -> tuple[np.ndarray, float]:
    """``(patches (S, 1, PATCH, PATCH) float32, scale)``: normalised patches of every site.

    Parameters
    ----------
    image : (rows, cols) array
        The analysed frame (grey levels, any dtype).
    model : SiteModel
        Its sites (positions in px) and lattice constant ``a_px``.

    Returns
    -------
    patches, scale
        Patches with their own low level subtracted, divided by ``scale`` (grey levels):
        the mean centre value of the found interior metal sites (1 where there are none).
    """
    from scipy.ndimage import map_coordinates

    s = model.sites
    n = len(s)
    if n == 0:
        return np.zeros((0, 1, PATCH, PATCH), np.float32), 1.0
    a_px = float(model.a_px)
    if not np.isfinite(a_px) or a_px <= 0:
        raise ValueError(f"the site model has no lattice constant (a_px = {a_px})")
    f = max(1, int(a_px / SAMPLES_PER_A))
    small = block_mean(image, f, dtype=np.float32)
    # sample grid (px of the block-averaged frame), axis-aligned
    g = np.linspace(-HALF_WIDTH_A, HALF_WIDTH_A, PATCH) * a_px / f
    gy, gx = np.meshgrid(g, g, indexing="ij")
    # block k covers px k f .. k f + f - 1: its centre is at (k + 0.5) f - 0.5
    cx = (s.xy[:, 0] + 0.5) / f - 0.5
    cy = (s.xy[:, 1] + 0.5) / f - 0.5
    ys = cy[:, None, None] + gy[None]
    xs = cx[:, None, None] + gx[None]
    vals = map_coordinates(small, [ys.ravel(), xs.ravel()], order=1, mode="nearest")
    p = vals.reshape(n, PATCH, PATCH).astype(np.float32)
    # the percentile (linear interpolation, as numpy's) from a partial sort
    q = BACKGROUND_PERCENTILE / 100.0 * (PATCH * PATCH - 1)
    k0 = int(q)
    part = np.partition(p.reshape(n, -1), [k0, k0 + 1], axis=1)
    low = part[:, k0] + (part[:, k0 + 1] - part[:, k0]) * np.float32(q - k0)
    p -= low[:, None, None]
    c0, c1 = PATCH // 2 - CENTRE_HALF, PATCH // 2 + CENTRE_HALF + 1
    centre = p[:, c0:c1, c0:c1].mean(axis=(1, 2))
    ref = (s.role == ROLE_M) & ~s.placed & ~s.boundary
    if ref.sum() < 3:
        ref = s.role == ROLE_M
    scale = float(np.mean(centre[ref])) if ref.any() else 0.0
    if not np.isfinite(scale) or scale <= 0:
        scale = float(np.std(p)) or 1.0
    p /= np.float32(scale)
    return p[:, None], scale


def build_site_head(width: int = 16):
    """The CNN: ``(N, 1, PATCH, PATCH)`` -> ``(N, 4)``: mean and log-variance of the metal
    reading, then of the chalcogen reading. ~0.4 M multiply-adds per site at ``width`` 16."""
    import torch.nn as nn

    w = int(width)

    def block(cin, cout, stride):
        return [nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]

    return nn.Sequential(
        *block(1, w // 2, 1),  # 17
        *block(w // 2, w, 2),  # 9
        *block(w, w, 1),
        *block(w, 2 * w, 2),  # 5
        nn.Flatten(),
        nn.Linear(2 * w * 25, 2 * w),
        nn.ReLU(inplace=True),
        nn.Linear(2 * w, 4),
    )


@dataclass
class SiteReading:
    """Per-site output of the head: ``signal`` (S,) in units of the frame's mean metal column
    (0: empty column), ``sigma`` (S,) its predicted standard deviation, same units;
    ``scale`` the frame's grey levels per unit."""

    signal: np.ndarray
    sigma: np.ndarray
    scale: float


class SiteHead:
    """A loaded site-state head (CPU inference; see the module docstring).

    ``roles``: the sublattices (``"M"``, ``"X"``) whose states
    :func:`~.states.read_site_states` reads from the head; the others keep their heights
    (default: the card's ``roles``, else both).
    """

    def __init__(self, net, card: dict[str, Any], batch_size: int = 4096, roles: tuple[str, ...] | None = None):
        self.net = net.eval()
        self.card = card
        self.batch_size = int(batch_size)
        roles = tuple(roles if roles is not None else card.get("roles", ("M", "X")))
        if not roles or any(r not in ("M", "X") for r in roles):
            raise ValueError(f"roles must be 'M' and/or 'X', got {roles!r}")
        self.roles = roles

    def predict_patches(self, patches: np.ndarray, role: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(mean (N,), log-variance (N,))`` of normalised patches; ``role`` per patch."""
        import torch

        n = len(patches)
        mean, logvar = np.zeros(n, np.float32), np.zeros(n, np.float32)
        x_role = np.asarray(role) == ROLE_X
        with torch.inference_mode():
            for b0 in range(0, n, self.batch_size):
                out = self.net(torch.from_numpy(np.ascontiguousarray(patches[b0 : b0 + self.batch_size]))).numpy()
                xr = x_role[b0 : b0 + self.batch_size]
                mean[b0 : b0 + len(out)] = np.where(xr, out[:, 2], out[:, 0])
                logvar[b0 : b0 + len(out)] = np.where(xr, out[:, 3], out[:, 1])
        return mean, logvar

    def read(self, image: np.ndarray, model: SiteModel) -> SiteReading:
        """Every site's own column signal and its uncertainty (:class:`SiteReading`)."""
        patches, scale = site_patches(image, model)
        mean, logvar = self.predict_patches(patches, model.sites.role)
        return SiteReading(mean.astype(float), np.exp(0.5 * np.clip(logvar, -20, 10)).astype(float), scale)


def site_head_weights(path: str | Path | None = None) -> Path:
    """The weights file :func:`load_site_head` reads: None or ``"default"`` the shipped
    ``weights/site_head.pt``, else the path itself."""
    return default_weights("site_head") if path is None or str(path) == "default" else Path(path)


def load_site_head(path: str | Path | None = None, roles: tuple[str, ...] | None = None) -> SiteHead:
    """Load a site-state head (None or ``"default"``: the shipped ``weights/site_head.pt``);
    ``roles`` as in :class:`SiteHead`.

    Raises
    ------
    WeightsError
        If the file is missing, corrupt or does not hold a site-state head (the message
        names the file).
    """
    p = site_head_weights(path)
    sd, card = load_weights(p)
    if card.get("task") != "site-state head":
        raise WeightsError(f"weights file {p} does not hold a site-state head (task {card.get('task')!r})")
    try:
        if int(card["patch"]) != PATCH or float(card["half_width_a"]) != HALF_WIDTH_A:
            raise ValueError(f"patch {card['patch']} / half width {card['half_width_a']} a, "
                             f"this version reads {PATCH} / {HALF_WIDTH_A}")
        net = build_site_head(int(card["width"]))
        net.load_state_dict(sd)
    except (KeyError, ValueError, RuntimeError, TypeError) as exc:
        raise WeightsError(f"weights file {p} does not hold a site-state head ({exc})") from exc
    return SiteHead(net, card, roles=roles)
