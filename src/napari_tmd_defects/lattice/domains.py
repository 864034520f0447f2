"""Domains: which fine-lattice sublattice is the metal, which the chalcogen, which empty.

Within a lattice patch (:mod:`.graph`) the three sublattice classes ``(n - m) mod 3`` are
the M columns, the X columns and the hollow sites in some order. The order is read from
the image around every column: the intensity at the neighbouring positions of each
class (six of its own class at ``a``, three of each other class at ``a / sqrt 3``; all
taken where the local lattice puts them, so a missing column reads dark), averaged over
about two lattice constants. The darkest class is the hollow; of the other two the
brighter is the chalcogen or the metal as the material's Z-contrast says (a prior: the
image decides where it is which). A change of that order inside a patch is a mirror-twin,
inversion or translation boundary; a different patch is a different grain. Regions of a
patch whose local orders differ but whose levels give the same roles are one domain.

Where the two occupied classes are about equally bright, the local order is not trusted
and the patch's overall order is used instead, unless the patch splits cleanly into two
regions in which one or the other class is brighter by several standard errors (a
weak-contrast inversion or twin domain; an alloy's fluctuations only give a tail).

Where they are about equally bright and the composition mixes only one sublattice (e.g.
Mo0.5W0.5Se2: Mo and W on the metal sites, Se2 on every chalcogen site), the sublattice
whose columns vary more from site to site is the mixed one (:func:`roles_by_spread`).
"""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage as ndi
from scipy import sparse
from scipy.sparse import csgraph
from scipy.spatial import cKDTree

from ..sites import CANONICAL_PARTNER, Domain
from .columns import WorkImage
from .graph import FINE_OFFSETS, LatticeGraph

__all__ = ["apply_hollow_votes", "assign_domains", "hollow_votes", "mixed_sublattice", "neighbourhood_matrix",
           "roles_by_heights", "roles_by_spread", "set_roles", "MIN_DOMAIN_COLUMNS"]

#: Domains with fewer columns are not kept (their columns count as boundary).
MIN_DOMAIN_COLUMNS = 10
#: Orientations this far apart (degrees) within one lattice patch are different grains.
MIN_GRAIN_TWIST_DEG = 5.0
#: Regions of another order with fewer columns, inside a patch, join their neighbour.
MIN_ISLAND_COLUMNS = 20
#: ... but in a patch whose classes stand clearly apart, an island of at least this many
#: columns that show its order clearly stays a domain of its own (smaller ones would be
#: dissolved as domains, losing columns the larger domain reads right).
MIN_CLEAR_ISLAND_COLUMNS = 10
#: ... whose median bright margin is at least this (fraction of the span: MoTe2's islands
#: show ~0.45-0.6, MoSe2's ~0.2, too close to tell a small domain from noise) ...
MIN_CLEAR_ISLAND_MARGIN = 0.35
#: ... and whose surroundings' bright-hollow span is at least this fraction of the patch's.
MIN_CLEAR_ISLAND_SPAN = 0.5
#: Local orders closer than this (fraction of the bright-hollow span) defer to the patch's.
MIN_MARGIN = 0.12
#: Where a patch's dimmer occupied class stands closer than this to its hollow (fraction of
#: the span), the columns whose own margin is that close too and whose bright class is not
#: the patch's take the patch's hollow place relative to their bright class.
HOLLOW_MARGIN = 2 * MIN_MARGIN
#: A metal/chalcogen swap needs the two occupied classes this far apart (fraction of the span).
MIN_SWAP_MARGIN = 0.2
#: ... or, where the whole patch's two classes are closer than that, a local difference of
#: the other sign this many standard errors from zero.
MIN_SWAP_Z = 3.0
#: ... and a linked region of the other sign counts as swapped where its columns' own
#: (unsmoothed) differences sum to this many standard errors (neighbouring columns share
#: the positions their levels sample: twice :data:`MIN_SWAP_Z` allows for that).
MIN_RAW_SWAP_Z = 2 * MIN_SWAP_Z
#: A sublattice is mixed when its columns' expected mean relative deviation (Z^1.7 over the
#: composition's species) exceeds the other sublattice's by this much.
MIN_MIXED_SPREAD = 0.1
#: Where the two occupied classes are closer than MIN_SWAP_MARGIN, the class whose sites'
#: intensities spread more (interquartile range, this many standard errors: ~1 % by chance)
#: is the mixed sublattice ...
MIN_SPREAD_Z = 2.5
#: ... measured on at least this many sites of each class (bootstrap resamples for the error).
MIN_SPREAD_SITES = 30
SPREAD_BOOTSTRAP = 200
#: Where a domain's neighbour levels put its two occupied classes closer than
#: :data:`MIN_SWAP_MARGIN` (a narrow domain whose neighbourhoods reach across its
#: boundaries), the heights of its own sites decide when they stand at least that far apart
#: and :data:`MIN_SWAP_Z` standard errors, on at least this many sites of each class.
MIN_HEIGHT_SITES = 10
#: In a patch whose classes are hard to tell apart (islands of fewer than 3
#: MIN_ISLAND_COLUMNS count as noise), an island of at least this many columns stays a
#: domain where its own sites' heights show its order (:func:`_height_islands`).
MIN_HEIGHT_ISLAND_COLUMNS = 2 * MIN_ISLAND_COLUMNS
#: Where a formula's end members disagree on the brighter column (open shares,
#: :func:`~napari_tmd_defects.lattice.brighter_ambiguous`), the class whose upper tail
#: ((q95 - q50) / (q75 - q50) of its site intensities) is at least this many times the
#: other's ...
MIN_TAIL_RATIO = 2.0
#: ... and this many standard errors (bootstrap) above it is the alloyed sublattice, at any
#: contrast: a heavier minority (W in a Mo-rich (Mo,W)Se2) stretches that tail; noise
#: stretches it as much as the upper quartile, vacancies and lighter species neither. On
#: (Mo,W)Se2 frames of 0-100 % W (paper, realistic, hard presets) the other frames' tails
#: stayed within a factor 1.95 of each other; the Mo-rich ones' stood up to 40x apart (the
#: q95 of ~100 sites is noisy: z 1.7-6.9 where the ratio exceeded 2).
MIN_TAIL_Z = 1.8
#: ``(q95 - q50) / (q75 - q50)`` of a Gaussian.
GAUSS_UPPER_TAIL = 1.6449 / 0.6745

_NORM2 = FINE_OFFSETS[:, 0] ** 2 + FINE_OFFSETS[:, 1] ** 2 + FINE_OFFSETS[:, 0] * FINE_OFFSETS[:, 1]
SHELL1 = FINE_OFFSETS[_NORM2 == 1]
SHELL3 = FINE_OFFSETS[_NORM2 == 3]


def step_class(step: np.ndarray) -> np.ndarray:
    """Sublattice class change ``(dn - dm) mod 3`` of fine-lattice steps ``(..., 2)``."""
    s = np.asarray(step)
    return np.mod(s[..., 0] - s[..., 1], 3)


def neighbourhood_matrix(xy: np.ndarray, group: np.ndarray, radius: float, sigma: float) -> sparse.csr_matrix:
    """Gaussian weights (``sigma`` px, cut at ``radius`` px) between points of one group, self included."""
    n = len(xy)
    if n == 0:
        return sparse.csr_matrix((0, 0))
    t = cKDTree(xy)
    d = t.sparse_distance_matrix(t, radius, output_type="coo_matrix")
    same = group[d.row] == group[d.col]
    rows, cols, dist = d.row[same], d.col[same], d.data[same]
    del d, same  # (millions of pairs on a large frame: each copy let go once used)
    w = np.exp(-0.5 * (dist / sigma) ** 2)
    del dist
    m = sparse.coo_matrix((w, (rows, cols)), shape=(n, n))
    del w, rows, cols
    m = m.tocsr()
    return m + sparse.identity(n, format="csr")


def _class_intensities(graph: LatticeGraph, work: WorkImage, idx: np.ndarray) -> np.ndarray:
    """Mean signal ``(len(idx), 3)`` at the neighbouring positions of each absolute class."""
    cls = graph.sublattice()[idx]
    b = graph.basis[idx]
    xy = graph.xy[idx]
    out = np.zeros((len(idx), 3))
    groups = [(0, SHELL3)] + [(k, SHELL1[step_class(SHELL1) == k]) for k in (1, 2)]
    for k, steps in groups:
        pos = xy[:, None, :] + np.einsum("nij,sj->nsi", b, steps.astype(float))
        vals = work.sample(pos.reshape(-1, 2)).reshape(len(idx), len(steps))
        out[np.arange(len(idx)), (cls + k) % 3] = vals.mean(axis=1)
    return out


def _order(levels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Hollow and bright class of each row of ``levels`` (n, 3), and the two margins."""
    hollow = np.argmin(levels, axis=1)
    bright = np.argmax(levels, axis=1)
    srt = np.sort(levels, axis=1)
    span = np.maximum(srt[:, 2] - srt[:, 0], 1e-12)
    return hollow, bright, (srt[:, 2] - srt[:, 1]) / span, (srt[:, 1] - srt[:, 0]) / span


def _swap_significance(levels: np.ndarray, w: sparse.csr_matrix, sel: np.ndarray, bright: int,
                       other: int, raw: bool = False) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """Smoothed difference of two classes' levels at each column, in standard errors.

    ``levels`` (n, 3) per column, ``w`` the neighbourhood weights, ``sel`` the columns of
    one patch; the error comes from the columns' scatter about their smoothed value
    (median absolute deviation, so a swapped region does not inflate it) and the number
    of columns the smoothing averages. With ``raw``, also each column's own difference in
    units of that scatter (unsmoothed: a narrow domain's own columns, not their
    surroundings across its boundaries).
    """
    d = levels[sel, bright] - levels[sel, other]
    ws = w[sel][:, sel]
    tot = np.asarray(ws.sum(axis=1)).reshape(-1)
    smooth = (ws @ d) / tot
    n_eff = tot**2 / np.asarray(ws.multiply(ws).sum(axis=1)).reshape(-1)
    sd = max(1.4826 * np.median(np.abs(d - smooth)) * math.sqrt(1.0 + 1.0 / max(float(np.median(n_eff)), 1.0)),
             1e-12)
    z = smooth / sd * np.sqrt(n_eff)
    return (z, d / sd) if raw else z


def _hollow_significance(levels: np.ndarray, w: sparse.csr_matrix, sel: np.ndarray, bright: np.ndarray,
                         hollow: np.ndarray) -> np.ndarray:
    """How clearly (standard errors, :func:`_swap_significance`) each column of ``sel``
    shows its dimmer occupied class above its hollow (given its ``bright`` and ``hollow``
    classes); 0 elsewhere."""
    out = np.zeros(len(levels))
    rows = np.flatnonzero(sel)
    for b in range(3):
        c1, c2 = [k for k in range(3) if k != b]
        on = bright[rows] == b
        if not on.any():
            continue
        z = _swap_significance(levels, w, sel, c1, c2)[on]  # c1 over c2
        out[rows[on]] = np.where(hollow[rows[on]] == c2, z, -z)
    return out


def _two_regions(z: np.ndarray) -> bool:
    """True when values ``z`` (standard errors) split into a clearly negative and a clearly
    positive group: the best two-group split has means beyond -/+ :data:`MIN_SWAP_Z`, at
    least :data:`MIN_ISLAND_COLUMNS` values each, and is bimodal (Ashman's D >= 3)."""
    zs = np.sort(np.asarray(z, float))
    n = len(zs)
    if n < 2 * MIN_ISLAND_COLUMNS:
        return False
    k = np.arange(MIN_ISLAND_COLUMNS, n - MIN_ISLAND_COLUMNS + 1)
    c1, c2 = np.cumsum(zs), np.cumsum(zs**2)
    m_lo, m_hi = c1[k - 1] / k, (c1[-1] - c1[k - 1]) / (n - k)
    v_lo = c2[k - 1] / k - m_lo**2
    v_hi = (c2[-1] - c2[k - 1]) / (n - k) - m_hi**2
    b = int(np.argmin(k * v_lo + (n - k) * v_hi))
    d = abs(m_hi[b] - m_lo[b]) * math.sqrt(2.0 / max(v_lo[b] + v_hi[b], 1e-12))
    return bool(m_lo[b] < -MIN_SWAP_Z and m_hi[b] > MIN_SWAP_Z and d >= 3.0)


def _swapped_regions(z: np.ndarray, rows: np.ndarray, lp: np.ndarray, lq: np.ndarray, n: int,
                     z_raw: np.ndarray | None = None) -> np.ndarray:
    """Which of the columns ``rows`` (of ``n``, linked by ``lp``-``lq``) lie in a linked region
    of negative swap significance ``z`` (:func:`_swap_significance`) of at least
    :data:`MIN_ISLAND_COLUMNS` columns whose mean is below -:data:`MIN_SWAP_Z`, where the other
    columns' mean is above +:data:`MIN_SWAP_Z` (a swapped domain, not a tail of noise).
    With the columns' own differences ``z_raw``, a region also counts where their sum is
    below -:data:`MIN_RAW_SWAP_Z` standard errors (a narrow domain, whose smoothed values
    mix in its neighbours')."""
    out = np.zeros(len(rows), bool)
    neg = z < 0.0
    if min(np.count_nonzero(neg), np.count_nonzero(~neg)) < MIN_ISLAND_COLUMNS or z[~neg].mean() <= MIN_SWAP_Z:
        return out
    label = np.arange(n) + 2  # columns outside ``rows``: each its own region
    label[rows] = neg
    _, comp, sizes = _regions(label, lp, lq)
    for c in np.unique(comp[rows[neg]]):
        members = neg & (comp[rows] == c)
        if sizes[c] < MIN_ISLAND_COLUMNS:
            continue
        if z[members].mean() < -MIN_SWAP_Z or (
                z_raw is not None and z_raw[members].sum() / math.sqrt(np.count_nonzero(members)) < -MIN_RAW_SWAP_Z):
            out |= members
    return out


def _screen_angle(v: np.ndarray) -> np.ndarray:
    """Angle (degrees, counter-clockwise on screen) of (x, y-down) vectors."""
    return np.degrees(np.arctan2(-v[..., 1], v[..., 0]))


def _angle_dist(a, b):
    return np.abs((np.asarray(a) - b + 180.0) % 360.0 - 180.0)


def assign_domains(
    graph: LatticeGraph,
    work: WorkImage,
    x_brighter: bool,
    *,
    min_columns: int = MIN_DOMAIN_COLUMNS,
    alloyed: bool = False,
) -> tuple[np.ndarray, np.ndarray, list[Domain]]:
    """Split the lattice patches into domains and give every column its role.

    Parameters
    ----------
    graph : LatticeGraph
    work : WorkImage
        The smoothed, background-free image the columns were found in.
    x_brighter : bool
        The material's prior: True when a full chalcogen column is brighter than a metal
        column (MoTe2, MoSe2), False otherwise (MoS2, WS2, WSe2).
    min_columns : int
        Smaller domains are dissolved (their columns get domain -1).
    alloyed : bool
        A sublattice's columns vary with the composition (:func:`mixed_sublattice`): a
        cluster of the heavier species can turn the local order, so a linked region of the
        other order is a swapped domain only where the whole patch splits cleanly.

    Returns
    -------
    domain : (N,) int
        Domain of every column (-1: none).
    role : (N,) int
        :data:`~.sites.ROLE_X`, :data:`~.sites.ROLE_M`, :data:`~.sites.ROLE_HOLLOW`, or -1.
    domains : list of Domain
    """
    n = len(graph.xy)
    domain = np.full(n, -1, np.int64)
    role = np.full(n, -1, np.int64)
    idx = np.flatnonzero(graph.patch >= 0)
    if len(idx) == 0:
        return domain, role, []
    a_px = graph.a_fine * math.sqrt(3.0)
    levels = _class_intensities(graph, work, idx)
    patch = graph.patch[idx]
    w = neighbourhood_matrix(graph.xy[idx], patch, 2.0 * a_px, 1.0 * a_px)
    smooth = (w @ levels) / np.asarray(w.sum(axis=1)).reshape(-1, 1)
    # links between the indexed columns (positions in idx)
    pos = np.full(n, -1, np.int64)
    pos[idx] = np.arange(len(idx))
    lp, lq = pos[graph.links[:, 0]], pos[graph.links[:, 1]]
    keep = (lp >= 0) & (lq >= 0)
    lp, lq = lp[keep], lq[keep]
    hollow, bright, m_bright, m_hollow = _order(smooth)
    # where the local order is not clear, the patch's: the bright class needs the two
    # occupied classes clearly apart (else a noisy alloy would split into inversion
    # domains; a patch of two inversion domains is balanced overall); the hollow needs to stand out of the dimmer class
    # (where that class is not seen, the hollow keeps the patch's place relative to the
    # bright class: a guess the hexagons can correct)
    # a patch's contrast for the island rule below: the larger of its median levels' and of
    # the contrast its columns show around them (two balanced inversion domains, each clearly
    # ordered, give a low contrast of the patch's median levels)
    patch_contrast = {}
    span = np.ptp(smooth, axis=1)  # bright-hollow span of each column's surroundings
    rel_span = np.empty(len(idx))
    for p in np.unique(patch):
        sel = patch == p
        rel_span[sel] = span[sel] / max(float(np.median(span[sel])), 1e-12)
        ph, pb, mb, mh = _order(np.median(levels[sel], axis=0)[None])
        patch_contrast[p] = max(mb[0], float(np.median(m_bright[sel])))
        weak_b = sel & (m_bright < MIN_SWAP_MARGIN)
        bright[weak_b] = pb[0]
        other = int(3 - ph[0] - pb[0])
        if mb[0] < MIN_SWAP_MARGIN:
            # two occupied classes hard to tell apart column by column: a region where the
            # other one is significantly brighter is still a swapped (inversion, twin) domain
            # when the patch splits cleanly into two such regions (a noisy or alloyed patch
            # only has a tail of low values); the sign then places the boundary
            z = _swap_significance(levels, w, sel, int(pb[0]), other)
            if _two_regions(z):
                bright[np.flatnonzero(sel)[z < 0.0]] = other
        elif not alloyed and np.count_nonzero(weak_b) >= MIN_ISLAND_COLUMNS:
            # the patch's classes stand apart, but some of its columns' surroundings do not
            # show their order (a narrow or small swapped domain: its columns' surroundings
            # reach across its boundaries): linked columns of the patch's hollow, at least an
            # island's worth, that show the other class significantly brighter on average
            # while the rest show the patch's are a swapped domain (in a domain of another
            # hollow the 'other' class is its hollow: those are not compared)
            g = sel & (hollow == ph[0])
            if np.count_nonzero(g) >= 2 * MIN_ISLAND_COLUMNS:
                z, z_raw = _swap_significance(levels, w, g, int(pb[0]), other, raw=True)
                rows = np.flatnonzero(g)
                bright[rows[_swapped_regions(z, rows, lp, lq, len(idx), z_raw)]] = other
        # the dimmer occupied class hardly seen in the patch (a chalcogen at the noise
        # level): in a region whose bright class differs from the patch's (a translation
        # domain) and where it is not seen locally either, the hollow keeps the patch's
        # place relative to the bright class, so the region stays whole instead of
        # splitting at random into islands the larger domain swallows (a twin domain,
        # whose bright class is the patch's, keeps the hollow its columns show)
        # ("not seen": a margin below HOLLOW_MARGIN of the span that is not significant
        # either; a light chalcogen next to a heavy metal, S2 by W, stands only ~0.15-0.2 of
        # the span above the hollow however clean the frame, and a twin domain's columns
        # that show it consistently keep the hollow they show)
        if mh[0] < HOLLOW_MARGIN:
            z_h = _hollow_significance(levels, w, sel, bright, hollow)
            weak_h = sel & (m_hollow < HOLLOW_MARGIN) & (z_h < MIN_SWAP_Z) & (bright != pb[0])
            hollow[weak_h] = (bright[weak_h] + (ph[0] - pb[0])) % 3
    pattern = hollow * 3 + bright
    # majority of the neighbourhood (removes single noisy columns); in a patch whose classes
    # stand clearly apart, columns whose own surroundings show their order clearly keep it
    # where they form a small domain of their own (a strip-shaped domain at the frame's
    # edge is outvoted by the larger one next to it), not where they run along a boundary
    strong = np.array([patch_contrast[p] >= MIN_SWAP_MARGIN for p in patch])
    cls = graph.sublattice()[idx]
    votes = np.stack([np.asarray(w @ (pattern == k).astype(float)).reshape(-1) for k in range(9)], axis=1)
    voted = np.argmax(votes, axis=1)
    own = strong & (m_bright >= MIN_SWAP_MARGIN) & (m_hollow >= HOLLOW_MARGIN) & (pattern != voted)
    if own.any():
        trial = np.where(own, pattern, voted)
        _, comp, sizes = _regions(trial, lp, lq)
        own &= _clear_islands(comp, sizes, trial, lp, lq, m_bright, m_hollow, rel_span, cls, patch)
    pattern = np.where(own, pattern, voted)
    # grains of clearly different orientations that the graph linked through a boundary
    if graph.orientation is not None:
        pattern = pattern + 9 * _orientation_groups(np.degrees(graph.orientation[idx]), patch, w,
                                                    graph.xy[idx], graph.a_fine)
    # domains: linked columns of one patch and one pattern
    island_size = np.array([MIN_ISLAND_COLUMNS * (3 if patch_contrast[p] < MIN_SWAP_MARGIN else 1) for p in patch])
    kept = np.zeros(len(idx), bool)  # columns of islands found to be domains of their own
    for _ in range(3):
        keep, comp, sizes = _regions(pattern, lp, lq)
        # a small island of another order inside a patch is noise: it takes the order of the
        # largest region it is linked to (larger islands count as noise in patches whose
        # two column classes are hard to tell apart overall), unless the patch's classes
        # stand clearly apart and the island's own columns show its order clearly: a small
        # domain (an inversion or twin domain at the frame's edge) whose columns would
        # otherwise take the wrong roles
        # (once found, such an island stays one when the regions around it merge)
        kept |= _clear_islands(comp, sizes, pattern, lp, lq, m_bright, m_hollow, rel_span, cls, patch) & strong
        small = (sizes[comp] < island_size) & ~kept
        # ... or, in a patch whose classes are hard to tell apart, an island of at least
        # MIN_HEIGHT_ISLAND_COLUMNS whose own sites' heights show its brighter class clearly
        small &= ~_height_islands(graph, work, idx, patch, comp, sizes, pattern, small & ~strong)
        cross = ~keep & (small[lp] != small[lq])
        if not cross.any():
            break
        a, b = np.where(small[lp[cross]], lp[cross], lq[cross]), np.where(small[lp[cross]], lq[cross], lp[cross])
        best = {}
        for i, j in zip(comp[a], b):
            if i not in best or sizes[comp[j]] > sizes[comp[best[i]]]:
                best[i] = j
        for i, j in best.items():
            pattern[comp == i] = pattern[j]
    # a domain is one patch with one order (and orientation group): pieces of it that
    # other domains or gaps separate are the same crystal variant
    key = patch * 1000 + pattern
    keys, comp, sizes = np.unique(key, return_inverse=True, return_counts=True)
    comp = comp.reshape(-1)
    order = np.argsort(-sizes, kind="stable")

    def variant(sel: np.ndarray) -> Domain:
        d = Domain(id=0, patch=int(patch[sel][0]), rotation_deg=0.0, partner=(0, 0), hollow=(0, 0), x_class=0,
                   m_class=0, levels={}, contrast=0.0, basis=graph.basis[idx[sel]].mean(axis=0))
        set_roles(d, np.median(levels[sel], axis=0), int(pattern[sel][0]) % 9 // 3, x_brighter)
        return d

    # regions of one patch (and orientation group) whose orders differ only in which
    # occupied class looked brighter locally, but whose levels give the same roles, are one
    # crystal variant: one domain (else a boundary would run between them)
    pieces: list[tuple[np.ndarray, Domain]] = []
    for c in order:
        sel = comp == c
        # (an island kept as a domain of its own counts from MIN_CLEAR_ISLAND_COLUMNS // 2
        # columns of its bright class, as in :func:`_clear_islands`: a corner of a frame
        # where its dimmer class is not found holds little more)
        if sizes[c] < min_columns and not (kept[sel].all() and sizes[c] >= MIN_CLEAR_ISLAND_COLUMNS // 2):
            continue
        d = variant(sel)
        for k, (other, o) in enumerate(pieces):
            if (o.patch == d.patch and int(pattern[other][0]) // 9 == int(pattern[sel][0]) // 9
                    and (o.x_class, o.m_class) == (d.x_class, d.m_class)):
                both = variant(other | sel)
                if (both.x_class, both.m_class) == (d.x_class, d.m_class):
                    pieces[k] = (other | sel, both)
                    break
        else:
            pieces.append((sel, d))
    domains: list[Domain] = []
    for sel, d in pieces:
        d.id = len(domains)
        domains.append(d)
        domain[idx[sel]] = d.id
        role[idx[sel]] = _roles_of(cls[sel], d)
    _sharpen_borders(graph, domain, role, domains, idx, patch, levels, cls)
    return domain, role, domains


def _regions(pattern: np.ndarray, lp: np.ndarray, lq: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Regions of linked columns (links ``lp``-``lq``) of one pattern: which links stay
    inside a region, every column's region and the regions' sizes (columns)."""
    keep = pattern[lp] == pattern[lq]
    adj = sparse.coo_matrix((np.ones(int(keep.sum())), (lp[keep], lq[keep])), shape=(len(pattern),) * 2)
    n_comp, comp = csgraph.connected_components(adj, directed=False)
    return keep, comp, np.bincount(comp, minlength=n_comp)


def _clear_islands(comp: np.ndarray, sizes: np.ndarray, pattern: np.ndarray, lp: np.ndarray, lq: np.ndarray,
                   m_bright: np.ndarray, m_hollow: np.ndarray, rel_span: np.ndarray, cls: np.ndarray,
                   patch: np.ndarray) -> np.ndarray:
    """Per column: whether its region (``comp``, of ``sizes`` columns) is a small domain of
    its own rather than noise: at least :data:`MIN_CLEAR_ISLAND_COLUMNS` columns whose
    median margins are clear (bright over the dimmer occupied class at least
    :data:`MIN_CLEAR_ISLAND_MARGIN`, that over the hollow :data:`HOLLOW_MARGIN`), whose
    surroundings' bright-hollow span (``rel_span``, over the patch's median) is at least
    :data:`MIN_CLEAR_ISLAND_SPAN` (noise in a vacuum hole has clear margins of a tiny
    span), and which borders one other order only (a thin run of columns between two
    domains, where their surroundings mix both, is the boundary, not a domain; regions of
    fewer than :data:`MIN_DOMAIN_COLUMNS` and other ``patch``es' domains do not count)."""
    n_comp = len(sizes)
    cross = comp[lp] != comp[lq]
    cross &= patch[lp] == patch[lq]  # levels are smoothed within a patch: another's domains do not mix in
    n_pat = int(pattern.max()) + 1
    # the orders of the domains it borders (not of a few stray columns along a boundary)
    cp = cross & (sizes[comp[lq]] >= MIN_DOMAIN_COLUMNS)
    cq = cross & (sizes[comp[lp]] >= MIN_DOMAIN_COLUMNS)
    pairs = np.unique(np.r_[comp[lp[cp]] * n_pat + pattern[lq[cp]], comp[lq[cq]] * n_pat + pattern[lp[cq]]])
    n_other = np.bincount(pairs // n_pat, minlength=n_comp)
    # columns of the region's bright class (the cells it holds, also where the dimmer
    # class's columns are too faint to be found)
    n_bright = np.bincount(comp, weights=(cls == pattern % 9 % 3), minlength=n_comp)
    ok = ((sizes >= MIN_CLEAR_ISLAND_COLUMNS) | (n_bright >= MIN_CLEAR_ISLAND_COLUMNS // 2)) & (n_other <= 1)
    cand = np.flatnonzero(ok)
    if len(cand):
        def med(v):
            return np.asarray(ndi.median(v, labels=comp, index=cand))

        ok[cand] = ((med(m_bright) >= MIN_CLEAR_ISLAND_MARGIN) & (med(m_hollow) >= HOLLOW_MARGIN)
                    & (med(rel_span) >= MIN_CLEAR_ISLAND_SPAN))
    return ok[comp]


def _height_contrast(graph: LatticeGraph, work: WorkImage, members: np.ndarray, pat: int) -> tuple[float, float]:
    """Median site height of pattern ``pat``'s brighter occupied class above its other one,
    as a fraction of the bright-hollow span, and in standard errors (nan: too few sites)."""
    h_cls, b_cls = pat // 3, pat % 3
    if h_cls == b_cls:
        return math.nan, math.nan
    hb, ho, hh = (_class_site_heights(graph, work, members, k) for k in (b_cls, 3 - h_cls - b_cls, h_cls))
    if min(len(hb), len(ho)) < MIN_HEIGHT_SITES or len(hh) == 0:
        return math.nan, math.nan
    gap, se = _median_gap(hb, ho)
    return gap / max(float(np.median(hb) - np.median(hh)), 1e-12), gap / max(se, 1e-12)


def _median_gap(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """Difference of the medians of ``a`` and ``b`` and its standard error (from each
    sample's median absolute deviation: a few vacancies or outliers do not inflate it)."""
    se = math.hypot(*(1.2533 * 1.4826 * float(np.median(np.abs(h - np.median(h)))) / math.sqrt(len(h))
                      for h in (a, b)))
    return float(np.median(a) - np.median(b)), se


def _height_islands(graph: LatticeGraph, work: WorkImage, idx: np.ndarray, patch: np.ndarray, comp: np.ndarray,
                    sizes: np.ndarray, pattern: np.ndarray, small: np.ndarray) -> np.ndarray:
    """Columns of the ``small`` regions (``comp`` labels of the patch columns ``idx``) of at
    least :data:`MIN_HEIGHT_ISLAND_COLUMNS` whose own sites show their pattern's brighter
    occupied class clearly (:func:`_height_contrast`: at least :data:`MIN_MARGIN` of the span and
    :data:`MIN_SWAP_Z` standard errors) and about as far as the largest region of their patch
    shows its own (within a factor 2: a twin or inversion domain holds the same columns; a
    region of scan streaks or contamination that happens to favour the other class does not)."""
    out = np.zeros(len(idx), bool)
    cand = np.unique(comp[small & (sizes[comp] >= MIN_HEIGHT_ISLAND_COLUMNS)])
    if len(cand) == 0:
        return out
    ref = {}
    for c in cand:
        sel = comp == c
        p = int(patch[sel][0])
        if p not in ref:
            in_p = np.unique(comp[patch == p])
            big = in_p[np.argmax(sizes[in_p])]
            ref[p] = _height_contrast(graph, work, idx[comp == big], int(pattern[comp == big][0]) % 9)[0]
        rel, z = _height_contrast(graph, work, idx[sel], int(pattern[sel][0]) % 9)
        out[sel] = rel >= MIN_MARGIN and z >= MIN_SWAP_Z and 0.5 * ref[p] <= rel <= 2.0 * ref[p]
    return out


def _sharpen_borders(graph, domain, role, domains, idx, patch, levels, cls) -> None:
    """Columns near another domain of their patch take the order their closer surroundings
    (one lattice constant) show, when it is that of one of the two domains: the wider
    smoothing that keeps domains whole would put the boundary a column or two off."""
    if len(domains) < 2:
        return
    a_px = graph.a_fine * math.sqrt(3.0)
    dom = domain[idx]
    near = neighbourhood_matrix(graph.xy[idx], patch, 1.5 * a_px, 1.0 * a_px).tocoo()
    border = np.zeros(len(idx), bool)
    other = (dom[near.row] >= 0) & (dom[near.col] >= 0) & (dom[near.row] != dom[near.col])
    border[near.row[other]] = True
    if not border.any():
        return
    w1 = neighbourhood_matrix(graph.xy[idx], patch, 1.0 * a_px, 0.5 * a_px)
    fine = (w1 @ levels) / np.asarray(w1.sum(axis=1)).reshape(-1, 1)
    h_f, b_f, mb, mh = _order(fine)
    pattern_of = {d.id: (3 - d.x_class - d.m_class, max((d.x_class, d.m_class), key=lambda k: d.class_levels[k]))
                  for d in domains}
    cand = {}
    for i, j in zip(near.row[other], near.col[other]):
        cand.setdefault(int(i), {int(dom[i])}).add(int(dom[j]))
    for i, ks in cand.items():
        if mh[i] < 2 * MIN_MARGIN or mb[i] < MIN_MARGIN:
            continue
        for k in ks:
            ph, pb = pattern_of[k]
            if h_f[i] == ph and b_f[i] == pb and k != dom[i]:
                domain[idx[i]] = k
                role[idx[i]] = _roles_of(cls[i:i + 1], domains[k])[0]
                break


def _orientation_groups(theta_deg: np.ndarray, patch: np.ndarray, w: sparse.csr_matrix, xy: np.ndarray,
                        a_fine: float) -> np.ndarray:
    """Group of every column by the lattice orientation around it: where a patch's
    orientations fall into separate peaks (at least :data:`MIN_GRAIN_TWIST_DEG` apart, each
    with a sixth of the columns), the columns take the nearest peak, then the majority of
    their neighbourhood, then, next to the other grain, the grain whose lattice their
    position fits (:func:`_fit_groups`). A bent lattice has one broad peak and stays one
    group."""
    group = np.zeros(len(theta_deg), np.int64)
    for p in np.unique(patch):
        sel = np.flatnonzero(patch == p)
        th = theta_deg[sel]
        if len(th) < 3 * MIN_ISLAND_COLUMNS:
            continue
        lo, hi = np.floor(th.min()), np.ceil(th.max()) + 1
        hist, edges = np.histogram(th, bins=np.arange(lo, hi + 1.0))
        if len(hist) < 3:  # all within a degree or two: one orientation
            continue
        hist = np.convolve(hist, np.ones(3) / 3, mode="same")
        centres = 0.5 * (edges[:-1] + edges[1:])
        peaks = [k for k in range(len(hist)) if hist[k] > 0 and hist[k] == hist[max(0, k - 3):k + 4].max()]
        big = sorted(k for k in peaks if hist[max(0, k - 2):k + 3].sum() >= len(th) / 6)
        keep = big[:1]
        for k in big[1:]:
            # a separate grain: far enough, with a clear dip between the two peaks
            dip = hist[keep[-1]:k + 1].min()
            if centres[k] - centres[keep[-1]] >= MIN_GRAIN_TWIST_DEG and dip < 0.3 * min(hist[k], hist[keep[-1]]):
                keep.append(k)
        keep = [centres[k] for k in keep]
        if len(keep) < 2:
            continue
        g = np.argmin(np.abs(th[:, None] - np.array(keep)[None]), axis=1)
        sub = w[sel][:, sel]
        votes = np.stack([np.asarray(sub @ (g == k).astype(float)).reshape(-1) for k in range(len(keep))], axis=1)
        group[sel] = _fit_groups(xy[sel], np.argmax(votes, axis=1), np.radians(keep), a_fine)
    return group


def _fit_groups(xy: np.ndarray, group: np.ndarray, theta: np.ndarray, a_fine: float, rounds: int = 3) -> np.ndarray:
    """Columns next to another orientation group join the group whose lattice their position fits.

    The smoothed orientation blurs a grain boundary over a lattice constant or two; the
    positions do not: seen from a grain's columns within 1.2 a, a column of that grain
    sits on its fine lattice (orientation ``theta[g]`` rad, spacing ``a_fine`` px), a
    column of the other grain mostly does not. A column moves when its median distance to
    the other grain's lattice is under a quarter spacing and under 0.6 times that to its
    own group's.
    """
    from .graph import _basis

    n = len(xy)
    k = min(13, n)
    if k < 4:
        return group
    dist, nb = cKDTree(xy).query(xy, k=k)
    dist, nb = dist[:, 1:], nb[:, 1:]
    near = dist < 1.2 * math.sqrt(3.0) * a_fine
    group = group.copy()
    for _ in range(rounds):
        resid = np.full((n, len(theta)), np.inf)
        for g, th in enumerate(theta):
            b = _basis(np.array([th]), a_fine)[0]
            v = xy[:, None, :] - xy[nb]  # (n, k-1, 2)
            f = v @ np.linalg.inv(b).T
            r = (f - np.round(f)) @ b.T
            d = np.hypot(r[..., 0], r[..., 1]) / a_fine
            use = near & (group[nb] == g)
            cnt = use.sum(axis=1)
            dm = np.where(use, d, np.inf)
            # median of the used entries (inf elsewhere sorts last)
            srt = np.sort(dm, axis=1)
            lo = np.take_along_axis(srt, np.maximum((cnt - 1) // 2, 0)[:, None], axis=1)[:, 0]
            hi = np.take_along_axis(srt, np.maximum(cnt // 2, 0)[:, None], axis=1)[:, 0]
            med = 0.5 * (lo + hi)
            resid[:, g] = np.where(cnt >= 2, med, np.inf)
        best = np.argmin(resid, axis=1)
        own = resid[np.arange(n), group]
        move = (best != group) & (resid[np.arange(n), best] < 0.25) & (resid[np.arange(n), best] < 0.6 * own)
        if not move.any():
            break
        group[move] = best[move]
    return group


def _roles_of(cls: np.ndarray, d: Domain) -> np.ndarray:
    r = np.full(len(cls), 2, np.int64)
    r[cls == d.x_class] = 0
    r[cls == d.m_class] = 1
    return r


def set_roles(d: Domain, levels: np.ndarray, hollow_class: int, x_brighter: bool) -> None:
    """Give domain ``d`` its sublattice roles: ``hollow_class`` empty, the brighter of the other
    two classes the chalcogen (``x_brighter``) or the metal; partner and hollow steps and the
    cell orientation from its mean basis. ``levels``: intensity of the three classes."""
    lev = np.asarray(levels, float)
    h_cls = int(hollow_class)
    rest = [k for k in range(3) if k != h_cls]
    b_cls = max(rest, key=lambda k: lev[k])
    mid = rest[0] if rest[1] == b_cls else rest[1]
    x_cls, m_cls = (b_cls, mid) if x_brighter else (mid, b_cls)
    span = max(lev[b_cls] - lev[h_cls], 1e-12)
    basis = d.basis
    p_steps = SHELL1[step_class(SHELL1) == (m_cls - x_cls) % 3]
    ang = _screen_angle(p_steps @ basis.T)
    k = int(np.argmin(_angle_dist(ang, _screen_angle(CANONICAL_PARTNER))))
    partner, p_ang = p_steps[k], float(ang[k])
    h_steps = SHELL1[step_class(SHELL1) == (h_cls - x_cls) % 3]
    h_ang = _screen_angle(h_steps @ basis.T)
    hollow_step = h_steps[int(np.argmin(_angle_dist(h_ang, p_ang - 60.0)))]
    rot = (p_ang - float(_screen_angle(CANONICAL_PARTNER)) + 60.0) % 120.0 - 60.0
    if rot <= -60.0:
        rot += 120.0
    d.rotation_deg = float(rot)
    d.partner = (int(partner[0]), int(partner[1]))
    d.hollow = (int(hollow_step[0]), int(hollow_step[1]))
    d.x_class, d.m_class = int(x_cls), int(m_cls)
    d.levels = {"X": float(lev[x_cls]), "M": float(lev[m_cls]), "hollow": float(lev[h_cls])}
    d.contrast = float((lev[b_cls] - lev[mid]) / span)
    d.hollow_margin = float((lev[mid] - lev[h_cls]) / span)
    d.class_levels = lev


def mixed_sublattice(material: str, z_exponent: float = 1.7) -> str | None:
    """``"M"`` or ``"X"`` where the composition mixes that sublattice clearly more than the
    other (the expected mean relative deviation of its column intensities, Z^``z_exponent``
    over the species' shares, chalcogen columns as two independent atoms, exceeds the
    other's by :data:`MIN_MIXED_SPREAD`), else None (binaries, dilute dopants, both mixed)."""
    from ..materials import CHALCOGENS, METALS, parse_composition

    comp = parse_composition(str(material))
    if len(comp.metals) > 1 and len(comp.chalcogens) > 1:
        return None  # both sublattices mixed: their shares (often open) cannot say which spreads more

    def spread(values: list[float], weights: list[float]) -> float:
        v, w = np.asarray(values, float), np.asarray(weights, float)
        if len(v) < 2 or w.sum() <= 0:
            return 0.0
        w = w / w.sum()
        mean = float(np.sum(w * v))
        return float(np.sum(w * np.abs(v / mean - 1.0))) if mean > 0 else 0.0

    ms = comp.shares(comp.metals)
    xs = comp.shares(comp.chalcogens)
    s_m = spread([METALS[k] ** z_exponent for k in ms], list(ms.values()))
    pairs = [(CHALCOGENS[a] ** z_exponent + CHALCOGENS[b] ** z_exponent, fa * fb)
             for a, fa in xs.items() for b, fb in xs.items()]
    s_x = spread([p[0] for p in pairs], [p[1] for p in pairs])
    if s_m - s_x >= MIN_MIXED_SPREAD:
        return "M"
    if s_x - s_m >= MIN_MIXED_SPREAD:
        return "X"
    return None


def _class_site_heights(graph: LatticeGraph, work: WorkImage, members: np.ndarray, cls: int) -> np.ndarray:
    """Signal at every site of sublattice class ``cls`` that the columns ``members`` (graph
    indices, one domain) or their nearest neighbours occupy, found or not: each site once,
    at the mean of the positions its neighbours' local lattices give it; sites outside the
    image are left out."""
    sub = graph.sublattice()
    pos, key = [graph.xy[members[sub[members] == cls]]], [graph.nm[members[sub[members] == cls]]]
    for st in SHELL1:
        src = members[(sub[members] + step_class(st)) % 3 == cls]
        if len(src):
            pos.append(graph.xy[src] + graph.basis[src] @ st.astype(float))
            key.append(graph.nm[src] + st)
    p, k = np.concatenate(pos), np.concatenate(key)
    if len(p) == 0:
        return np.zeros(0)
    _, inv = np.unique(k, axis=0, return_inverse=True)
    inv = inv.reshape(-1)
    cnt = np.bincount(inv)
    xy = np.stack([np.bincount(inv, p[:, 0]) / cnt, np.bincount(inv, p[:, 1]) / cnt], axis=1)
    w_xy = work.to_work(xy)
    h, w = work.signal.shape
    inside = (w_xy[:, 0] >= 0) & (w_xy[:, 1] >= 0) & (w_xy[:, 0] <= w - 1) & (w_xy[:, 1] <= h - 1)
    return np.asarray(work.sample(xy[inside]), float)


def _spread_z(a: np.ndarray, b: np.ndarray, n_boot: int = SPREAD_BOOTSTRAP, max_sites: int = 2000) -> float:
    """How much more the intensities ``a`` spread than ``b``: the log ratio of their
    interquartile ranges (relative to each median: a two-species mixture widens it whichever
    species dominates, a few vacancies do not), in standard errors from a bootstrap (fixed
    seed; at most ``max_sites`` values of each)."""
    rng = np.random.default_rng(0)
    a, b = (v if len(v) <= max_sites else rng.choice(v, max_sites, replace=False) for v in (a, b))

    def log_iqr(v: np.ndarray) -> np.ndarray:
        med = np.median(v, axis=-1, keepdims=True)
        q = np.percentile(v / np.maximum(med, 1e-12), [25.0, 75.0], axis=-1)
        return np.log(q[1] - q[0] + 1e-3)

    if min(len(a), len(b)) < 3 or np.median(a) <= 0 or np.median(b) <= 0:
        return 0.0
    d = float(log_iqr(a) - log_iqr(b))
    boot = log_iqr(a[rng.integers(0, len(a), (n_boot, len(a)))]) - log_iqr(b[rng.integers(0, len(b), (n_boot, len(b)))])
    return d / max(float(np.std(boot)), 1e-9)


def _upper_spread_z(a: np.ndarray, b: np.ndarray, n_boot: int = SPREAD_BOOTSTRAP,
                    max_sites: int = 2000) -> tuple[float, float, float]:
    """How much longer the upper tail of ``a`` is than that of ``b``: the log ratio of their
    ``(q95 - q50) / (q75 - q50)``, that ratio in standard errors from a bootstrap (fixed
    seed; at most ``max_sites`` values of each), and the log ratio of the longer one to a
    Gaussian's (:data:`GAUSS_UPPER_TAIL`)."""
    rng = np.random.default_rng(0)
    a, b = (v if len(v) <= max_sites else rng.choice(v, max_sites, replace=False) for v in (a, b))

    def log_upper(v: np.ndarray) -> np.ndarray:
        q50, q75, q95 = np.percentile(v, [50.0, 75.0, 95.0], axis=-1)
        return np.log(np.maximum(q95 - q50, 1e-12) / np.maximum(q75 - q50, 1e-12))

    la, lb = float(log_upper(a)), float(log_upper(b))
    boot = (log_upper(a[rng.integers(0, len(a), (n_boot, len(a)))])
            - log_upper(b[rng.integers(0, len(b), (n_boot, len(b)))]))
    return la - lb, (la - lb) / max(float(np.std(boot)), 1e-9), max(la, lb) - math.log(GAUSS_UPPER_TAIL)


def _swap_roles(graph: LatticeGraph, domain: np.ndarray, role: np.ndarray, d: Domain) -> None:
    """Domain ``d``'s metal and chalcogen classes trade roles (``role`` updated in place)."""
    h_cls = 3 - d.x_class - d.m_class
    new_x = d.m_class
    b_cls = max((d.x_class, d.m_class), key=lambda k: d.class_levels[k])
    set_roles(d, d.class_levels, h_cls, new_x == b_cls)
    members = np.flatnonzero(domain == d.id)
    role[members] = _roles_of(graph.sublattice()[members], d)


def _sites_decide(graph: LatticeGraph, work: WorkImage, domain: np.ndarray, role: np.ndarray, d: Domain,
                  mixed: str | None, test) -> bool:
    """Let ``test(hm, hx)`` on the site intensities of domain ``d``'s metal and chalcogen
    classes (> 0: the metal class is the ``mixed`` sublattice, < 0: the chalcogen class, 0:
    it cannot tell) name the ``mixed`` sublattice, swapping the roles if needed (at least
    :data:`MIN_SPREAD_SITES` sites of each class). Returns True when it decided."""
    if mixed not in ("M", "X") or d.class_levels is None:
        return False
    members = np.flatnonzero(domain == d.id)
    hx = _class_site_heights(graph, work, members, d.x_class)
    hm = _class_site_heights(graph, work, members, d.m_class)
    if min(len(hx), len(hm)) < MIN_SPREAD_SITES:
        return False
    side = test(hm, hx)
    if side == 0:
        return False
    if (side > 0) != (mixed == "M"):
        _swap_roles(graph, domain, role, d)
    d.roles_from_spread = True
    return True


def _longer_tail(hm: np.ndarray, hx: np.ndarray) -> int:
    """+1 / -1 where the metal / chalcogen class has the clearly longer upper tail
    (:data:`MIN_TAIL_RATIO` times the other's and a Gaussian's, :data:`MIN_TAIL_Z`), else 0."""
    if np.median(hx) <= 0 or np.median(hm) <= 0:
        return 0
    lr, z, excess = _upper_spread_z(hm, hx)  # lr > 0: the metal class's upper tail is the longer
    # the longer tail also stands out of a Gaussian's by the same factor (a minority of a
    # quarter or more moves the upper quartile too and shortens its own class's ratio)
    if min(abs(lr), excess) < math.log(MIN_TAIL_RATIO) or abs(z) < MIN_TAIL_Z:
        return 0
    return 1 if lr > 0 else -1


def _broader(hm: np.ndarray, hx: np.ndarray) -> int:
    """+1 / -1 where the metal / chalcogen class spreads more (:data:`MIN_SPREAD_Z`), else 0."""
    z = _spread_z(hm, hx)  # > 0: the metal class spreads more
    return 0 if abs(z) < MIN_SPREAD_Z else (1 if z > 0 else -1)


def _tail_decides(graph: LatticeGraph, work: WorkImage, domain: np.ndarray, role: np.ndarray, d: Domain,
                  mixed: str | None) -> bool:
    """Where the formula cannot say which column is brighter, let the class whose sites
    have the clearly longer upper tail (:func:`_longer_tail`) be the ``mixed`` sublattice
    (swapping the roles if needed). Returns True when it decided."""
    return _sites_decide(graph, work, domain, role, d, mixed, _longer_tail)


def _spread_decides(graph: LatticeGraph, work: WorkImage, domain: np.ndarray, role: np.ndarray, d: Domain,
                    mixed: str | None) -> bool:
    """Where domain ``d``'s two occupied classes are about equally bright, let the one whose
    sites spread more be the ``mixed`` sublattice (swapping the roles if needed). Returns
    True when the spread decided."""
    if d.contrast >= MIN_SWAP_MARGIN:
        return False
    return _sites_decide(graph, work, domain, role, d, mixed, _broader)


def roles_by_spread(graph: LatticeGraph, work: WorkImage, domain: np.ndarray, role: np.ndarray,
                    domains: list[Domain], mixed: str | None, ambiguous: bool = False) -> list[str]:
    """Metal or chalcogen by the site-to-site spread where intensity cannot tell.

    In a domain whose two occupied classes are closer than :data:`MIN_SWAP_MARGIN` (the
    material's prior on which is brighter then decides little), and where the composition
    mixes one sublattice (``mixed``, :func:`mixed_sublattice`), the class whose site
    intensities spread more (interquartile range relative to the median, at least
    :data:`MIN_SPREAD_Z` standard errors more, on :data:`MIN_SPREAD_SITES` sites or more of
    each) is that sublattice.
    Where the formula's end members disagree on the brighter column (``ambiguous``), at
    any contrast the class with the clearly longer upper tail of site intensities is that
    sublattice (:func:`_tail_decides`).
    Updates ``role`` and ``domains`` in place (``roles_from_spread``); returns notes.
    """
    notes = []
    what = "metal" if mixed == "M" else "chalcogen"
    for d in domains:
        before = d.m_class
        flipped = " (not the material's prior)"
        if _spread_decides(graph, work, domain, role, d, mixed):
            notes.append(f"domain {d.id}: metal and chalcogen columns are about equally bright (contrast "
                         f"{d.contrast:.2f}); the {what} sublattice is the one whose columns vary more from site "
                         "to site (the composition mixes it)" + (flipped if d.m_class != before else ""))
        elif ambiguous and _tail_decides(graph, work, domain, role, d, mixed):
            notes.append(f"domain {d.id}: the {what} sublattice is the one with a tail of brighter columns (a "
                         "heavier species of the alloy)" + (flipped if d.m_class != before else ""))
    return notes


def roles_by_heights(graph: LatticeGraph, work: WorkImage, domain: np.ndarray, role: np.ndarray,
                     domains: list[Domain], x_brighter: bool) -> list[str]:
    """Which occupied class is brighter from the domain's own site heights, where the
    neighbour levels cannot tell.

    The levels of :func:`assign_domains` average the image at each column's neighbouring
    positions; in a narrow domain many of those lie across its boundaries, on the other
    domain's columns, and its two occupied classes come out about equally bright (a MoSe2
    inversion domain: Se2 and Mo levels within 1 %, Se2 columns 30 % brighter at the sites).
    In a domain whose level contrast is below :data:`MIN_SWAP_MARGIN`, the median height of
    each class's sites (:func:`_class_site_heights`) replaces its level where the two medians
    stand at least :data:`MIN_SWAP_MARGIN` of the bright-hollow span and :data:`MIN_SWAP_Z`
    standard errors apart; the roles follow the material's prior on the new levels. For
    compositions whose sublattices are told by their spread (:func:`roles_by_spread`) this is
    not used. Updates ``role`` and ``domains`` in place; returns notes where the roles changed.
    """
    notes = []
    for d in domains:
        if d.contrast >= MIN_SWAP_MARGIN or d.class_levels is None:
            continue
        members = np.flatnonzero(domain == d.id)
        heights = {c: _class_site_heights(graph, work, members, c) for c in (d.x_class, d.m_class)}
        if min(len(h) for h in heights.values()) < MIN_HEIGHT_SITES:
            continue
        med = {c: float(np.median(h)) for c, h in heights.items()}
        h_cls = 3 - d.x_class - d.m_class
        span = max(max(med.values()) - float(d.class_levels[h_cls]), 1e-12)
        diff, se = _median_gap(heights[d.x_class], heights[d.m_class])
        if abs(diff) < MIN_SWAP_MARGIN * span or abs(diff) < MIN_SWAP_Z * se:
            continue
        lev = np.asarray(d.class_levels, float).copy()
        for c, v in med.items():
            lev[c] = v
        before = d.m_class
        set_roles(d, lev, h_cls, x_brighter)
        role[members] = _roles_of(graph.sublattice()[members], d)
        if d.m_class != before:
            notes.append(f"domain {d.id}: metal and chalcogen told apart by the heights of its own columns "
                         "(the intensities around them could not tell)")
    return notes


def hollow_votes(graph: LatticeGraph, domain: np.ndarray, points: np.ndarray,
                 tolerance: float = 0.35) -> dict[int, np.ndarray]:
    """Votes of points (e.g. hexagon centres, px) for the sublattice class each sits on, per
    domain: ``{domain id: counts (3,)}``. A point votes when it lies within ``tolerance``
    fine spacings of a fine-lattice position of the domain of its nearest column."""
    pts = np.asarray(points, float).reshape(-1, 2)
    out: dict[int, np.ndarray] = {}
    on = np.flatnonzero(domain >= 0)
    if len(on) == 0 or len(pts) == 0:
        return out
    _, k = cKDTree(graph.xy[on]).query(pts)
    node = on[k]
    b = graph.basis[node]
    d = pts - graph.xy[node]
    step = np.rint(np.einsum("nij,nj->ni", np.linalg.inv(b), d)).astype(np.int64)
    res = np.linalg.norm(d - np.einsum("nij,nj->ni", b, step.astype(float)), axis=1)
    ok = res < tolerance * graph.a_fine
    cls = np.mod(graph.nm[node, 0] + step[:, 0] - graph.nm[node, 1] - step[:, 1], 3)
    for dm, c in zip(domain[node][ok], cls[ok]):
        out.setdefault(int(dm), np.zeros(3, np.int64))[c] += 1
    return out


def apply_hollow_votes(graph: LatticeGraph, domain: np.ndarray, role: np.ndarray, domains: list[Domain],
                       points: np.ndarray, x_brighter: bool, noise: float, *, min_votes: int = 10,
                       min_share: float = 0.7, min_sigmas: float = 3.0, work: WorkImage | None = None,
                       mixed: str | None = None, ambiguous: bool = False) -> list[str]:
    """Let hexagon centres (the hollows of 2DIP-Net's hexagons) check each domain's hollows.

    Where most of a domain's hexagons sit on another class than the intensities made the
    hollow, and the intensities could not tell (the dimmer column class less than
    ``min_sigmas`` noise standard deviations ``noise`` above the hollow), the domain's
    roles follow the hexagons; where the intensities were clear, the disagreement is
    reported; given ``work`` and the ``mixed`` sublattice, metal and chalcogen then follow the
    site spread where it decides (:func:`roles_by_spread`). Updates ``role`` and ``domains``
    in place and returns plain-language notes.
    """
    notes = []
    votes = hollow_votes(graph, domain, points)
    cls_all = graph.sublattice()
    for d in domains:
        v = votes.get(d.id)
        if v is None or v.sum() < min_votes:
            continue
        h_cls = 3 - d.x_class - d.m_class
        d.hexagons_on_hollows = float(v[h_cls] / v.sum())
        top = int(np.argmax(v))
        if top == h_cls or v[top] < min_share * v.sum():
            continue
        lev = np.sort(d.class_levels)
        if lev[1] - lev[0] < min_sigmas * noise:
            set_roles(d, d.class_levels, top, x_brighter)
            sel = domain == d.id
            role[sel] = _roles_of(cls_all[sel], d)
            d.hexagons_on_hollows = float(v[top] / v.sum())
            d.roles_from_hexagons = True
            d.roles_from_spread = False
            if work is not None and not _spread_decides(graph, work, domain, role, d, mixed) and ambiguous:
                _tail_decides(graph, work, domain, role, d, mixed)
            notes.append(f"domain {d.id}: the intensities could not tell the hollow sites; taken from the "
                         f"hexagon detector ({100 * d.hexagons_on_hollows:.0f} % of its hexagons there)")
        else:
            notes.append(f"domain {d.id}: the hexagon detector centres {100 * v[top] / v.sum():.0f} % of its "
                         "hexagons on what the intensities call columns: check this domain")
    return notes
