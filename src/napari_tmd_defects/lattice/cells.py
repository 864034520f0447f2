"""Sites, local gap filling, boundaries and unit cells of each domain.

* **Sites** are the columns of a domain that sit on its M or X sublattice.
* **Local gap filling**: a position of the M or X sublattice where no column was found
  (a vacancy, or a column too faint to stand out) gets a *placed* site when its own
  neighbours in the domain vouch for it: all three nearest sites of the other
  sublattice present, or at least six of its nine nearest sites. It is put where those
  neighbours put it (their position plus the local lattice step). Four rounds, so small
  vacancy clusters close, but a hole in the film or the space beyond the flake's edge
  is never filled, nor a position on the far side of a boundary (nearer to another
  domain's columns than to its own).
* **Dim columns**: a position of the M or X sublattice next to present sites whose
  intensity reaches half its sublattice's level holds a column even where that column is
  no local maximum (a dim column on the shoulders of bright ones, e.g. with defocus).
* **Boundaries**: a site is on a boundary when a site of another domain lies within
  :data:`BOUNDARY_RADIUS_A` a, when one of its links contradicts the lattice indices (a
  dislocation core), when its column is far from where its neighbours put it, or when a
  bright column that fits no domain (a boundary atom) lies next to it.
* **Cells**: every X site with its partner M site (the domain's canonical pairing),
  with an affine frame from the canonical cell to the image that follows the local
  lattice (rotation, shear, stretch), so the classifier always sees a canonical cell.
"""

from __future__ import annotations

import math

import numpy as np
from scipy.spatial import cKDTree

from ..geometry import dilate_disk
from ..sites import (
    CANONICAL_HOLLOW,
    CANONICAL_PARTNER,
    ROLE_M,
    ROLE_X,
    CellSites,
    Domain,
    Sites,
    cell_box_corners,
)
from .columns import Columns, WorkImage
from .domains import SHELL1, SHELL3, step_class
from .graph import LatticeGraph

__all__ = ["boundary_lines", "build_cells", "build_sites", "cell_frames", "point_roles", "BOUNDARY_RADIUS_A"]

#: A site within this distance (lattice constants) of another domain's site is on a boundary.
BOUNDARY_RADIUS_A = 0.8
#: Columns displaced from where their neighbours put them by more than this (fine spacings).
MAX_MISFIT = 0.35
#: A position of the lattice this bright (fraction of its sublattice's level) holds a column,
#: local maximum or not.
DIM_COLUMN_LEVEL = 0.5
#: An unindexed column brighter than this fraction of its domain's dimmer sublattice is a stray atom.
STRAY_LEVEL = 0.6
_NEIGHBOUR_STEPS = np.concatenate([SHELL1, SHELL3])


def _foreign(pos: np.ndarray, dom: np.ndarray, col_xy: np.ndarray, col_dom: np.ndarray, tree: cKDTree,
             a_fine: float) -> np.ndarray:
    """Positions ``(N, 2)`` of domain ``dom`` that lie nearer (by a tenth of a fine spacing)
    to a column of another domain than to any of their own, within 1.5 fine spacings."""
    if len(pos) == 0 or len(col_xy) == 0:
        return np.zeros(len(pos), bool)
    k = min(8, len(col_xy))
    d, j = tree.query(pos, k=k, distance_upper_bound=1.5 * a_fine)
    d, j = d.reshape(len(pos), k), j.reshape(len(pos), k)
    ok = np.isfinite(d)
    cd = np.where(ok, col_dom[np.minimum(j, len(col_xy) - 1)], -1)
    d_own = np.where(ok & (cd == dom[:, None]), d, np.inf).min(axis=1)
    d_other = np.where(ok & (cd >= 0) & (cd != dom[:, None]), d, np.inf).min(axis=1)
    return d_other < d_own - 0.1 * a_fine


def _keys(domain: np.ndarray, nm: np.ndarray) -> np.ndarray:
    """One int64 key per (domain, n, m)."""
    nm = np.asarray(nm, np.int64)
    return ((np.asarray(domain, np.int64) + 1) << 42) | ((nm[..., 0] + (1 << 20)) << 21) | (nm[..., 1] + (1 << 20))


def _lookup(sorted_keys: np.ndarray, keys: np.ndarray) -> np.ndarray:
    """Index of each key in ``sorted_keys`` or -1."""
    if len(sorted_keys) == 0:
        return np.full(np.shape(keys), -1, np.int64)
    i = np.clip(np.searchsorted(sorted_keys, keys), 0, len(sorted_keys) - 1)
    return np.where(sorted_keys[i] == keys, i, -1)


def _role_of(domains: list[Domain], dom: np.ndarray, nm: np.ndarray) -> np.ndarray:
    """Role of fine-lattice positions in their domain (2 = hollow)."""
    xc = np.array([d.x_class for d in domains])[dom]
    mc = np.array([d.m_class for d in domains])[dom]
    c = np.mod(nm[..., 0] - nm[..., 1], 3)
    return np.where(c == xc, ROLE_X, np.where(c == mc, ROLE_M, 2))


def build_sites(
    graph: LatticeGraph,
    columns: Columns,
    domain: np.ndarray,
    role: np.ndarray,
    domains: list[Domain],
    work: WorkImage,
    shape: tuple[int, int],
    *,
    rounds: int = 4,
) -> tuple[Sites, np.ndarray]:
    """The M and X sites of every domain, with local gap filling and boundary flags.

    Returns ``(sites, strays)`` where ``strays`` ``(K, 2)`` are bright columns that fit no
    domain (boundary atoms, adatoms).
    """
    h, w = shape
    on = (domain >= 0) & ((role == ROLE_X) | (role == ROLE_M))
    idx = np.flatnonzero(on)
    xy = graph.xy[idx].copy()
    fitted = (graph.fitted if graph.fitted is not None else graph.xy)[idx].copy()
    dom = domain[idx]
    nm = graph.nm[idx].copy()
    basis = graph.basis[idx].copy()
    rl = role[idx].copy()
    placed = np.zeros(len(idx), bool)
    if len(domains) == 0:
        return Sites.empty(), np.zeros((0, 2))
    a_px = graph.a_fine * math.sqrt(3.0)
    col_tree = cKDTree(graph.xy)
    found_cols = np.flatnonzero(domain >= 0)
    col_tree_dom = cKDTree(graph.xy[found_cols])
    lvl_x = np.array([d.levels["X"] for d in domains])
    lvl_m = np.array([d.levels["M"] for d in domains])
    for _ in range(rounds):
        keys = _keys(dom, nm)
        order = np.argsort(keys)
        skeys = keys[order]
        cand_nm = (nm[:, None, :] + _NEIGHBOUR_STEPS[None]).reshape(-1, 2)
        cand_dom = np.repeat(dom, len(_NEIGHBOUR_STEPS))
        ck = _keys(cand_dom, cand_nm)
        new = _lookup(skeys, ck) < 0
        ck, first = np.unique(ck[new], return_index=True)
        cand_nm, cand_dom = cand_nm[new][first], cand_dom[new][first]
        cand_role = _role_of(domains, cand_dom, cand_nm)
        ok = cand_role != 2
        cand_nm, cand_dom, cand_role = cand_nm[ok], cand_dom[ok], cand_role[ok]
        if len(cand_nm) == 0:
            break
        nb_nm = cand_nm[:, None, :] + _NEIGHBOUR_STEPS[None]
        nb = _lookup(skeys, _keys(cand_dom[:, None], nb_nm))
        nb = np.where(nb >= 0, order[np.maximum(nb, 0)], -1)
        present = nb >= 0
        other = (step_class(_NEIGHBOUR_STEPS) != 0)[None] & (_role_of(domains, cand_dom[:, None], nb_nm) != 2)
        occupied = (step_class(_NEIGHBOUR_STEPS) == 0)[None] | other
        n_other = (present & other).sum(axis=1)
        n_all = (present & occupied).sum(axis=1)
        has = n_all >= 2
        if not has.any():
            break
        # where the neighbours put the candidate
        j = np.maximum(nb, 0)
        step = (cand_nm[:, None, :] - nm[j]).astype(float)
        pred = xy[j] + np.einsum("nkij,nkj->nki", basis[j], step)
        cnt = np.maximum(present.sum(axis=1, keepdims=True), 1)
        pos = (pred * present[..., None]).sum(axis=1) / cnt
        b_new = (basis[j] * present[..., None, None]).sum(axis=1) / cnt[..., None]
        # its neighbours that the image can show (at the border some lie outside it)
        nb_pos = pos[:, None, :] - np.einsum("nij,kj->nki", b_new, -_NEIGHBOUR_STEPS.astype(float))
        e = 0.2 * a_px  # columns closer to the border than this are rarely found
        shown = occupied & (nb_pos[..., 0] >= e) & (nb_pos[..., 0] <= w - 1 - e) & (nb_pos[..., 1] >= e) & (nb_pos[..., 1] <= h - 1 - e)
        n_shown = shown.sum(axis=1)
        other_shown = (shown & other).sum(axis=1)
        # every other-sublattice neighbour the image shows is there (at least two), or most
        # of all nine neighbours it shows
        vouched = (n_all >= 3) & (((n_other >= 2) & (n_other >= other_shown)) | (n_all >= 6)
                                  | ((n_shown < 9) & (n_all >= np.ceil(0.75 * n_shown))))
        # a column that is there but no local maximum (a dim column on the shoulder of
        # bright ones): found by its intensity where the lattice puts it
        sig = work.sample(pos)
        lvl = np.where(cand_role == ROLE_X, lvl_x[cand_dom], lvl_m[cand_dom])
        seen = has & (sig >= DIM_COLUMN_LEVEL * lvl) & (sig >= 3.0 * work.noise)
        # never where a column of another domain stands (or a bright one of none)
        d_col, k_col = col_tree.query(pos, distance_upper_bound=0.5 * graph.a_fine)
        k_col = np.minimum(k_col, len(domain) - 1)
        other_dom = (domain[k_col] >= 0) & (domain[k_col] != cand_dom)
        bright_lone = (domain[k_col] < 0) & (columns.height[k_col] >= STRAY_LEVEL * np.minimum(lvl_x, lvl_m)[cand_dom])
        taken = np.isfinite(d_col) & (other_dom | bright_lone)
        # nor on the far side of a boundary: nearer to another domain's columns than to its own
        taken |= _foreign(pos, cand_dom, graph.xy[found_cols], domain[found_cols], col_tree_dom, graph.a_fine)
        seen &= ~taken
        fill = (seen | (has & vouched)) & ~taken
        inside = fill & (pos[:, 0] >= 0) & (pos[:, 0] <= w - 1) & (pos[:, 1] >= 0) & (pos[:, 1] <= h - 1)
        if not inside.any():
            break
        xy = np.concatenate([xy, pos[inside]])
        fitted = np.concatenate([fitted, pos[inside]])
        dom = np.concatenate([dom, cand_dom[inside]])
        nm = np.concatenate([nm, cand_nm[inside]])
        basis = np.concatenate([basis, b_new[inside]])
        rl = np.concatenate([rl, cand_role[inside]])
        placed = np.concatenate([placed, ~seen[inside]])
    height = work.sample(xy)
    n_found = len(idx)
    # ---- boundaries
    a_px = graph.a_fine * math.sqrt(3.0)
    h, w = shape
    boundary = np.zeros(len(xy), bool)
    # columns cut by the image border have biased peaks: no misfit judgement there
    margin = 0.5 * a_px
    inner = (xy[:, 0] >= margin) & (xy[:, 0] <= w - 1 - margin) & (xy[:, 1] >= margin) & (xy[:, 1] <= h - 1 - margin)
    # links between two columns of a domain that contradict the indices: a dislocation core
    # (links to noise peaks on hollows do not count)
    if graph.bad_links is not None and len(graph.bad_links):
        pos = np.full(len(graph.xy), -1, np.int64)
        pos[idx] = np.arange(len(idx))
        bl = pos[graph.bad_links]
        bl = bl[(bl >= 0).all(axis=1)]
        boundary[bl.ravel()] = True
    boundary[:n_found] |= (graph.misfit[idx] > MAX_MISFIT) & inner[:n_found]
    tree = cKDTree(xy)
    # a dislocation core takes the sites right next to it along
    core = np.flatnonzero(boundary)
    if len(core):
        for lst in tree.query_ball_point(xy[core], 0.65 * a_px):
            boundary[lst] = True
    # sites facing another domain's
    if len(domains) > 1:
        pairs = tree.query_pairs(BOUNDARY_RADIUS_A * a_px, output_type="ndarray")
        if len(pairs):
            cross = dom[pairs[:, 0]] != dom[pairs[:, 1]]
            boundary[pairs[cross].ravel()] = True
    # bright columns that fit no domain (or sit on a hollow): boundary atoms, adatoms
    lone = (domain < 0) | (role == 2)
    strays = np.zeros((0, 2))
    if lone.any() and len(xy):
        lvl = np.array([min(d.levels["X"], d.levels["M"]) for d in domains])
        d0, near = tree.query(graph.xy[lone], k=1)
        bright = columns.height[lone] > np.maximum(STRAY_LEVEL * lvl[dom[near]], 4.0 * work.noise)
        bright &= d0 < 1.2 * a_px
        p = graph.xy[lone]
        bright &= (p[:, 0] >= margin) & (p[:, 0] <= w - 1 - margin) & (p[:, 1] >= margin) & (p[:, 1] <= h - 1 - margin)
        strays = graph.xy[lone][bright]
        if len(strays) >= 2:
            # a boundary holds rows of them; a lone one is an adatom (or noise)
            sp = cKDTree(strays).query_pairs(1.2 * a_px, output_type="ndarray")
            grouped = np.unique(sp.ravel()) if len(sp) else np.zeros(0, np.int64)
            for lst in tree.query_ball_point(strays[grouped], 0.7 * a_px):
                boundary[lst] = True
    sites = Sites(xy=xy, role=rl, domain=dom, nm=nm, placed=placed, height=height, boundary=boundary, basis=basis,
                  fitted=fitted)
    for d in domains:
        d.n_sites = int(np.sum(dom == d.id))
    return sites, strays


def cell_frames(x_xy: np.ndarray, m_xy: np.ndarray, partner_vec: np.ndarray, hollow_vec: np.ndarray) -> np.ndarray:
    """Affine frames ``(N, 2, 3)`` canonical cell (a units) -> px.

    The linear part maps the canonical X -> M and X -> hollow bonds onto the local ones
    (``partner_vec``, ``hollow_vec``, px); the frame is centred on the midpoint of the
    two columns.
    """
    canon = np.stack([CANONICAL_PARTNER, CANONICAL_HOLLOW], axis=1)  # columns
    lin = np.stack([partner_vec, hollow_vec], axis=-1) @ np.linalg.inv(canon)
    mid = 0.5 * (np.asarray(x_xy, float) + np.asarray(m_xy, float))
    origin = mid - np.einsum("nij,j->ni", lin, 0.5 * CANONICAL_PARTNER)
    return np.concatenate([lin, origin[..., None]], axis=-1)


def frame_boxes(frame: np.ndarray, box=None) -> np.ndarray:
    """Axis-aligned bounding boxes ``(N, 4)`` of a canonical box under each frame."""
    corners = cell_box_corners() if box is None else cell_box_corners(box)
    p = np.einsum("nij,kj->nki", frame[:, :, :2], corners) + frame[:, None, :, 2]
    return np.concatenate([p.min(axis=1), p.max(axis=1)], axis=1)


def build_cells(sites: Sites, domains: list[Domain], shape: tuple[int, int]) -> CellSites:
    """Every X site with its partner M site; cells whose box leaves the image are dropped."""
    if len(sites) == 0 or not domains:
        return CellSites.empty()
    keys = _keys(sites.domain, sites.nm)
    order = np.argsort(keys)
    skeys = keys[order]
    xs = np.flatnonzero(sites.role == ROLE_X)
    partner = np.array([d.partner for d in domains])[sites.domain[xs]]
    hollow = np.array([d.hollow for d in domains])[sites.domain[xs]]
    j = _lookup(skeys, _keys(sites.domain[xs], sites.nm[xs] + partner))
    ok = j >= 0
    xs, partner, hollow = xs[ok], partner[ok], hollow[ok]
    ms = order[j[ok]]
    b = 0.5 * (sites.basis[xs] + sites.basis[ms])
    pv = np.einsum("nij,nj->ni", b, partner.astype(float))
    hv = np.einsum("nij,nj->ni", b, hollow.astype(float))
    frame = cell_frames(sites.fitted[xs], sites.fitted[ms], pv, hv)
    boxes = frame_boxes(frame)
    h, w = shape
    # inside the image, as the ground truth counts cells (with 0.05 px for rounding)
    tol = 0.55
    inside = (boxes[:, 0] >= -tol) & (boxes[:, 1] >= -tol) & (boxes[:, 2] <= w - 1 + tol) & (boxes[:, 3] <= h - 1 + tol)
    cells = CellSites(x=xs[inside], m=ms[inside], domain=sites.domain[xs][inside], frame=frame[inside],
                      boundary=(sites.boundary[xs] | sites.boundary[ms])[inside], boxes=boxes[inside])
    order = np.lexsort((cells.boxes[:, 0], np.round(cells.boxes[:, 1] / max(1.0, 0.5 * np.median(
        cells.boxes[:, 3] - cells.boxes[:, 1]) if len(cells) else 1.0)), cells.domain))
    cells = cells.subset(order)
    for d in domains:
        d.n_cells = int(np.sum((cells.domain == d.id) & ~cells.boundary))
    return cells


def _trace(skel: np.ndarray) -> list[np.ndarray]:
    """Polylines ``(K, 2)`` (row, col) through the pixels of a one-pixel-wide skeleton."""
    pts = {tuple(p) for p in np.argwhere(skel)}
    offs = [(-1, 0), (1, 0), (0, -1), (0, 1), (-1, -1), (-1, 1), (1, -1), (1, 1)]

    def nbrs(p):
        return [(p[0] + dy, p[1] + dx) for dy, dx in offs if (p[0] + dy, p[1] + dx) in pts]

    lines = []
    while pts:
        start = next((p for p in pts if len(nbrs(p)) == 1), next(iter(pts)))
        line = [start]
        pts.discard(start)
        cur = start
        while True:
            nx = nbrs(cur)
            if not nx:
                break
            cur = nx[0]
            pts.discard(cur)
            line.append(cur)
        lines.append(np.array(line, float))
    return lines


def boundary_lines(sites: Sites, shape: tuple[int, int], a_px: float) -> tuple[list[np.ndarray], float]:
    """Domain boundaries as polylines (``(K, 2)`` x, y px) and their total length (px).

    Every point of a grid of a / 4 takes the domain of its nearest site (within 0.9 a);
    the zone where two domains grown by 0.6 a overlap is thinned to a line.
    """
    from skimage.morphology import skeletonize

    doms = np.unique(sites.domain)
    if len(doms) < 2:
        return [], 0.0
    g = max(1.0, a_px / 4.0)
    h, w = shape
    gy, gx = np.mgrid[0:h:g, 0:w:g]
    grid = np.stack([gx.ravel(), gy.ravel()], axis=1)
    d, k = cKDTree(sites.xy).query(grid, distance_upper_bound=0.9 * a_px)
    lab = np.where(np.isfinite(d), sites.domain[np.minimum(k, len(sites) - 1)], -1).reshape(gx.shape)
    r = max(1, int(round(0.6 * a_px / g)))
    count = np.zeros(lab.shape, np.int64)
    for dm in doms:
        count += dilate_disk(lab == dm, r)
    zone = count >= 2
    if not zone.any():
        return [], 0.0
    skel = skeletonize(zone)
    # length: 8-connected steps, diagonal ones only where no straight path joins the pixels
    s = skel
    straight = np.sum(s[:, 1:] & s[:, :-1]) + np.sum(s[1:, :] & s[:-1, :])
    d1 = s[1:, 1:] & s[:-1, :-1] & ~s[:-1, 1:] & ~s[1:, :-1]
    d2 = s[1:, :-1] & s[:-1, 1:] & ~s[:-1, :-1] & ~s[1:, 1:]
    length = float((straight + math.sqrt(2.0) * (d1.sum() + d2.sum())) * g)
    lines = [np.stack([ln[:, 1] * g, ln[:, 0] * g], axis=1) for ln in _trace(skel) if len(ln) >= 2]
    return lines, length


def point_roles(sites: Sites, domains: list[Domain], points: np.ndarray, tolerance: float = 0.35) -> np.ndarray:
    """What lattice position each point ``(K, 2)`` px sits on: 0 X, 1 M, 2 hollow, -1 none.

    The nearest site's local lattice decides (within ``tolerance`` fine spacings), so
    points at the image border or in any domain are judged alike.
    """
    pts = np.asarray(points, float).reshape(-1, 2)
    out = np.full(len(pts), -1, np.int64)
    if len(sites) == 0 or len(pts) == 0:
        return out
    _, k = cKDTree(sites.xy).query(pts)
    b = sites.basis[k]
    d = pts - sites.xy[k]
    step = np.rint(np.einsum("nij,nj->ni", np.linalg.inv(b), d)).astype(np.int64)
    res = np.linalg.norm(d - np.einsum("nij,nj->ni", b, step.astype(float)), axis=1)
    a_f = np.sqrt(np.abs(np.linalg.det(b)) * 2.0 / math.sqrt(3.0))
    ok = res < tolerance * a_f
    role = _role_of(domains, sites.domain[k], sites.nm[k] + step)
    out[ok] = role[ok]
    return out
