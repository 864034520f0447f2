"""The neighbour graph of the columns: local lattice vectors and integer site indices.

In projection a 2H-MX2 monolayer puts its metal (M) columns, chalcogen (X) columns and
empty hollow sites on one triangular *fine lattice* of spacing ``a / sqrt(3)`` (the M-X
bond): each of the three is a sublattice of it, and which is which is told by the
intensities (:mod:`.domains`). So every column, whatever its species, gets integer
fine-lattice indices ``(n, m)``: its position is ``origin + n e1 + m e2`` with ``e1``,
``e2`` the *local* fine-lattice vectors (60° apart), and its sublattice class is
``(n - m) mod 3``.

The indices are found without a global lattice:

1. the local orientation of every column comes from the six-fold angle of the vectors
   to its neighbours, averaged over its neighbourhood (:func:`local_orientation`);
2. a pair of columns is *linked* when both have about the same orientation and their
   separation is an integer fine-lattice vector up to ``tolerance`` (pairs up to
   ``1.2 a`` apart, so the graph holds even where the faint sublattice is not seen);
3. the linked pairs split the columns into connected patches; in each, the orientation
   is unwrapped and the indices are summed along a minimum spanning tree (best links
   first), so slow bending and scan distortion never accumulate;
4. a local affine basis (2 x 2, shear and stretch included) is fitted to the links that
   agree with the indices around every column; links that disagree with the indices in
   that frame too (a dislocation core, a boundary) are counted as conflicts.

Grains of another orientation, and patches shifted by a fraction of a lattice vector,
are not linked and end up as separate patches.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import sparse
from scipy.sparse import csgraph
from scipy.spatial import cKDTree

__all__ = ["LatticeGraph", "index_columns", "local_orientation", "FINE_OFFSETS", "ROT60"]

SQRT3 = math.sqrt(3.0)
#: Fine-lattice index steps whose length is 1, sqrt(3) or 2 fine spacings.
FINE_OFFSETS = np.array(
    [(n, m) for n in range(-2, 3) for m in range(-2, 3) if n * n + m * m + n * m in (1, 3, 4)], dtype=np.int64
)
#: Index map of a 60° turn of the basis (e1 -> e2, e2 -> e2 - e1), acting on column vectors.
ROT60 = np.array([[0, -1], [1, 1]], dtype=np.int64)
#: Columns closer than this many fine spacings are linked candidates (1.2 a).
LINK_RADIUS = 1.2 * SQRT3
#: Neighbours whose orientations differ by more than this (degrees) are not linked.
MAX_TWIST_DEG = 8.0
#: Patches whose columns have fewer links on average are chance alignments, not a lattice.
MIN_MEAN_LINKS = 3.5
#: Links that fit within this many fine spacings hold a region together on their own ...
STRONG_FIT = 0.15
#: ... looser ones join two such regions only when at least this many agree.
MIN_BRIDGE = 3
#: ... unless one of the two regions holds fewer columns than this (a noisy fragment).
MIN_BRIDGED_REGION = 25


def _basis(theta: np.ndarray, a_f: np.ndarray) -> np.ndarray:
    """Isotropic fine bases ``(N, 2, 2)``: columns e1 at ``theta`` (rad, y-down frame), e2 at +60°."""
    t = np.asarray(theta, float)
    s = np.asarray(a_f, float) * np.ones_like(t)
    b = np.empty(t.shape + (2, 2))
    b[..., 0, 0], b[..., 1, 0] = s * np.cos(t), s * np.sin(t)
    b[..., 0, 1], b[..., 1, 1] = s * np.cos(t + math.pi / 3), s * np.sin(t + math.pi / 3)
    return b


def _wrap60(d: np.ndarray) -> np.ndarray:
    """Angle differences (rad) wrapped to [-30°, 30°)."""
    p = math.pi / 3
    return (np.asarray(d) + p / 2) % p - p / 2


def local_orientation(xy: np.ndarray, pairs: np.ndarray, a_f: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Orientation (rad, modulo 60°) and fine spacing (px) of the lattice around each point.

    Vectors of one fine spacing count with their six-fold phase ``exp(6 i phi)``, vectors of
    ``sqrt(3)`` spacings (the same sublattice) with the opposite sign, as they lie 30° off.
    Each point's sum is averaged with its neighbours'. Returns ``(theta, a_fine,
    strength)``; ``strength`` in [0, 1] is the six-fold order (0 for noise).
    """
    n = len(xy)
    theta, spacing, strength = np.zeros(n), np.full(n, float(a_f)), np.zeros(n)
    if n == 0 or len(pairs) == 0:
        return theta, spacing, strength
    p, q = pairs[:, 0], pairs[:, 1]
    v = xy[q] - xy[p]
    ln = np.hypot(v[:, 0], v[:, 1])
    near = (ln > 0.75 * a_f) & (ln < 1.25 * a_f)
    far = (ln > 0.85 * SQRT3 * a_f) & (ln < 1.15 * SQRT3 * a_f)
    sign = near.astype(float) - far.astype(float)
    z = sign * np.exp(6j * np.arctan2(v[:, 1], v[:, 0]))
    zn = np.bincount(p, weights=z.real, minlength=n) + 1j * np.bincount(p, weights=z.imag, minlength=n)
    zn += np.bincount(q, weights=z.real, minlength=n) + 1j * np.bincount(q, weights=z.imag, minlength=n)
    cnt = np.bincount(p, weights=np.abs(sign), minlength=n) + np.bincount(q, weights=np.abs(sign), minlength=n)
    # neighbourhood average (the point itself and every candidate neighbour)
    zs = zn + np.bincount(p, weights=zn[q].real, minlength=n) + np.bincount(q, weights=zn[p].real, minlength=n)
    zs = zs + 1j * (np.bincount(p, weights=zn[q].imag, minlength=n) + np.bincount(q, weights=zn[p].imag, minlength=n))
    cs = cnt + np.bincount(p, weights=cnt[q], minlength=n) + np.bincount(q, weights=cnt[p], minlength=n)
    theta = np.angle(zs) / 6.0
    strength = np.abs(zs) / np.maximum(cs, 1e-9)
    # spacing: lengths of the classified vectors, in fine spacings
    lf = np.where(near, ln, np.where(far, ln / SQRT3, 0.0))
    w = (near | far).astype(float)
    s_sum = np.bincount(p, weights=lf, minlength=n) + np.bincount(q, weights=lf, minlength=n)
    w_sum = np.bincount(p, weights=w, minlength=n) + np.bincount(q, weights=w, minlength=n)
    s2 = s_sum + np.bincount(p, weights=s_sum[q], minlength=n) + np.bincount(q, weights=s_sum[p], minlength=n)
    w2 = w_sum + np.bincount(p, weights=w_sum[q], minlength=n) + np.bincount(q, weights=w_sum[p], minlength=n)
    spacing = np.where(w2 > 0, s2 / np.maximum(w2, 1e-9), a_f)
    return theta, spacing, strength


@dataclass
class LatticeGraph:
    """Columns indexed on their local fine lattice (px, x = column, y = row).

    Attributes
    ----------
    xy : (N, 2)
        Column positions.
    patch : (N,) int
        Connected lattice patch of each column; -1: linked to no patch (noise, a lone
        column, a boundary atom).
    nm : (N, 2) int
        Fine-lattice indices, consistent within a patch.
    basis : (N, 2, 2)
        Local fine-lattice vectors as columns ``[e1, e2]`` (px), in the patch's index frame.
    conflicts : (N,) int
        Links at the column that disagree with the indices in the local affine frame
        (dislocation cores, boundaries).
    links : (E, 2) int
        Linked column pairs (both in one patch, consistent).
    misfit : (N,) float
        Distance (fine spacings) of the column from where its linked neighbours put it.
    a_fine : float
        Median fine spacing (px), ``a / sqrt(3)``.
    fitted : (N, 2)
        Each column's position averaged with where its linked neighbours put it (px).
    bad_links : (B, 2) int
        Column pairs of one patch whose index steps disagree with their indices in the
        local affine frame (dislocation cores).
    orientation : (N,) float
        Local lattice orientation (rad), continuous within a patch.
    """

    xy: np.ndarray
    patch: np.ndarray
    nm: np.ndarray
    basis: np.ndarray
    conflicts: np.ndarray
    links: np.ndarray
    misfit: np.ndarray
    a_fine: float
    fitted: np.ndarray | None = None
    bad_links: np.ndarray | None = None
    orientation: np.ndarray | None = None

    @property
    def n_patches(self) -> int:
        return int(self.patch.max()) + 1 if len(self.patch) and self.patch.max() >= 0 else 0

    def sublattice(self) -> np.ndarray:
        """Sublattice class ``(n - m) mod 3`` of every column (meaningful within a patch)."""
        return np.mod(self.nm[:, 0] - self.nm[:, 1], 3)


def _round_offsets(v: np.ndarray, basis: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Nearest allowed fine-lattice step of each vector ``v`` (E, 2) in ``basis`` (E, 2, 2)
    -> (steps (E, 2) int, residual length in px)."""
    # the 2 x 2 inverses in closed form (np.linalg.inv loops over the links in LAPACK)
    b00, b01, b10, b11 = basis[:, 0, 0], basis[:, 0, 1], basis[:, 1, 0], basis[:, 1, 1]
    det = b00 * b11 - b01 * b10
    f = np.stack([(b11 * v[:, 0] - b01 * v[:, 1]) / det, (b00 * v[:, 1] - b10 * v[:, 0]) / det], axis=1)
    d = np.rint(f).astype(np.int64)
    res = v - np.einsum("eij,ej->ei", basis, d)
    return d, np.hypot(res[:, 0], res[:, 1])


def _doubted_links(p: np.ndarray, q: np.ndarray, v: np.ndarray, nm: np.ndarray, basis: np.ndarray,
                   tolerance_px: float, n: int) -> tuple[np.ndarray, np.ndarray]:
    """The links the isotropic frame doubted, judged again in the columns' local affine
    bases -> (dislocation-core links (B, 2), loose links per column (N,)).

    Scan shear or stretch of ~10 % puts a sqrt(3) link a quarter of a fine spacing off
    its isotropic step; where the indices fit it in the local affine frame (the mean of
    the two columns' bases) the link is consistent. Of the rest, a dislocation core is a
    link whose index step disagrees with the indices (a Burgers circuit through it does
    not close). A loose link between columns whose indices agree is a misplaced or noisy
    column (scan noise, a dim column's peak at coarse sampling), not a core: a column far
    from where its neighbours put it is a boundary by its misfit instead.
    """
    d, r = _round_offsets(v, 0.5 * (basis[p] + basis[q]))
    agree = np.all(nm[q] - nm[p] == d, axis=1)
    loose = ~(agree & (r < tolerance_px))
    p, q, agree = p[loose], q[loose], agree[loose]
    conflicts = np.bincount(p, minlength=n) + np.bincount(q, minlength=n)
    return np.stack([p[~agree], q[~agree]], axis=1), conflicts


def _levels(order: np.ndarray, pred: np.ndarray) -> list[np.ndarray]:
    """Nodes of a breadth-first tree grouped by depth (parents before children)."""
    if len(order) == 0:
        return []
    # depth by pointer doubling over the tree (positions in ``order``; the root is its own parent)
    loc = np.empty(len(pred), np.int64)
    loc[order] = np.arange(len(order))
    up = loc[pred[order[1:]]]
    anc = np.concatenate([[0], up])
    d = np.concatenate([[0], np.ones(len(up), np.int64)])
    while True:
        nxt = anc[anc]
        if np.array_equal(nxt, anc):
            break
        d = d + d[anc]
        anc = nxt
    # a breadth-first order lists the nodes by depth
    return np.split(order, np.flatnonzero(np.diff(d)) + 1)


def index_columns(
    xy: np.ndarray,
    a_px: float,
    *,
    tolerance: float = 0.25,
    min_patch: int = 12,
    smooth_radius: float = 1.5,
    shape: tuple[int, int] | None = None,
) -> LatticeGraph:
    """Index columns on their local fine lattice (see the module docstring).

    Parameters
    ----------
    xy : (N, 2) array
        Column positions, px.
    a_px : float
        Lattice constant, px (the fine spacing is ``a_px / sqrt(3)``); 15 % off is fine.
    tolerance : float
        Largest misfit of a link, fine spacings.
    min_patch : int
        Patches with fewer columns are dropped (noise in vacuum).
    smooth_radius : float
        Radius (lattice constants) over which the local affine basis is averaged.
    shape : (rows, cols), optional
        Image shape: columns near its border are placed by their neighbours in ``fitted``.

    Returns
    -------
    LatticeGraph
    """
    pts = np.asarray(xy, dtype=float).reshape(-1, 2)
    n = len(pts)
    if not (math.isfinite(a_px) and a_px > 0):
        raise ValueError(f"a_px must be a positive number of px, got {a_px!r}")
    a_f = a_px / SQRT3
    empty = LatticeGraph(pts, np.full(n, -1, np.int64), np.zeros((n, 2), np.int64),
                         np.broadcast_to(_basis(np.zeros(1), a_f)[0], (n, 2, 2)).copy(),
                         np.zeros(n, np.int64), np.zeros((0, 2), np.int64), np.full(n, np.inf), a_f)
    if n < 3:
        return empty
    tree = cKDTree(pts)
    pairs = tree.query_pairs(LINK_RADIUS * a_f, output_type="ndarray")
    if len(pairs) == 0:
        return empty
    theta, spacing, _ = local_orientation(pts, pairs, a_f)
    p, q = pairs[:, 0], pairs[:, 1]
    v = pts[q] - pts[p]
    twist = _wrap60(theta[q] - theta[p])
    # each pair judged in the frame of its first column, turned half-way to the second's
    b_pair = _basis(theta[p] + 0.5 * twist, 0.5 * (spacing[p] + spacing[q]))
    step, res = _round_offsets(v, b_pair)
    norm2 = step[:, 0] ** 2 + step[:, 1] ** 2 + step[:, 0] * step[:, 1]
    a_loc = 0.5 * (spacing[p] + spacing[q])
    ok = (np.abs(twist) < math.radians(MAX_TWIST_DEG)) & np.isin(norm2, (1, 3, 4)) & (res < tolerance * a_loc)
    p, q, v, step, res, a_loc = p[ok], q[ok], v[ok], step[ok], res[ok], a_loc[ok]
    # (the link arrays no longer needed are dropped as the function goes: a frame of
    # 8192² px has millions of candidate links)
    del pairs, twist, b_pair, norm2, ok
    if len(p) == 0:
        return empty
    # a loose link joins two regions that close links already hold together only when
    # MIN_BRIDGE of them agree: one chance near-fit across a boundary does not merge domains
    strong = res < STRONG_FIT * a_loc
    g0 = sparse.coo_matrix((np.ones(int(strong.sum())), (p[strong], q[strong])), shape=(n, n))
    _, core = csgraph.connected_components(g0, directed=False)
    core_size = np.bincount(core)
    cp, cq = np.minimum(core[p], core[q]), np.maximum(core[p], core[q])
    pair = cp.astype(np.int64) * n + cq
    uniq, inv, cnt = np.unique(pair, return_inverse=True, return_counts=True)
    # (fragments of a noisy region always join: only two large regions need the quorum)
    small = np.minimum(core_size[cp], core_size[cq]) < MIN_BRIDGED_REGION
    keep = strong | (cp == cq) | (cnt[inv] >= MIN_BRIDGE) | small
    p, q, v, step, res = p[keep], q[keep], v[keep], step[keep], res[keep]
    del strong, g0, core, core_size, cp, cq, pair, uniq, inv, cnt, small, keep, a_loc
    # patches and a spanning tree through the best links
    w = sparse.coo_matrix((res / a_f + 1e-3, (p, q)), shape=(n, n)).tocsr()
    del res, step
    n_comp, comp = csgraph.connected_components(w, directed=False)
    sizes = np.bincount(comp, minlength=n_comp)
    mst = csgraph.minimum_spanning_tree(w)
    mst = (mst + mst.T).tocsr()
    patch = np.full(n, -1, np.int64)
    nm = np.zeros((n, 2), np.int64)
    theta_u = theta.copy()
    # a lattice links each column to several neighbours; chance alignments of noise peaks
    # (vacuum, contamination) make thin chains
    degree = np.bincount(p, minlength=n) + np.bincount(q, minlength=n)
    mean_degree = np.bincount(comp, weights=degree[:n], minlength=n_comp) / np.maximum(sizes, 1)
    big = np.flatnonzero((sizes >= min_patch) & (mean_degree >= MIN_MEAN_LINKS))
    for new_id, c in enumerate(big[np.argsort(-sizes[big], kind="stable")]):
        root = int(np.flatnonzero(comp == c)[0])
        order, pred = csgraph.breadth_first_order(mst, root, directed=False, return_predecessors=True)
        patch[order] = new_id
        levels = _levels(order, pred)[1:]
        child = order[1:]
        par = pred[child]
        turn = np.zeros(n)
        turn[child] = _wrap60(theta[child] - theta[par])
        for lev in levels:  # unwrap the orientation down the tree, one depth at a time
            theta_u[lev] = theta_u[pred[lev]] + turn[lev]
        d, _ = _round_offsets(pts[child] - pts[par], _basis(0.5 * (theta_u[par] + theta_u[child]),
                                                             0.5 * (spacing[par] + spacing[child])))
        step = np.zeros((n, 2), np.int64)
        step[child] = d
        for lev in levels:  # and sum the index steps
            nm[lev] = nm[pred[lev]] + step[lev]
    del w, mst
    keep = (patch[p] >= 0) & (patch[q] >= 0)
    p, q, v = p[keep], q[keep], v[keep]
    del keep
    # consistency of every link with the indices, judged in the unwrapped frame
    d, r = _round_offsets(v, _basis(0.5 * (theta_u[p] + theta_u[q]), 0.5 * (spacing[p] + spacing[q])))
    agree = np.all(nm[q] - nm[p] == d, axis=1)
    good = agree & (r < tolerance * a_f)
    doubted_p, doubted_q, doubted_v = p[~good], q[~good], v[~good]
    p, q, v = p[good], q[good], v[good]
    del d, r, good, agree
    dn = (nm[q] - nm[p]).astype(float)
    # local affine basis: least squares v = B dn over the links around each column
    mm = np.einsum("ei,ej->eij", dn, dn).reshape(-1, 4)
    vm = np.einsum("ei,ej->eij", v, dn).reshape(-1, 4)
    acc_m = np.zeros((n, 4))
    acc_v = np.zeros((n, 4))
    for k in range(4):
        acc_m[:, k] = np.bincount(p, weights=mm[:, k], minlength=n) + np.bincount(q, weights=mm[:, k], minlength=n)
        acc_v[:, k] = np.bincount(p, weights=vm[:, k], minlength=n) + np.bincount(q, weights=vm[:, k], minlength=n)
    del mm, vm, v
    inpatch = np.flatnonzero(patch >= 0)
    near = cKDTree(pts[inpatch]).sparse_distance_matrix(cKDTree(pts[inpatch]), smooth_radius * a_px,
                                                        output_type="coo_matrix")
    same = patch[inpatch[near.row]] == patch[inpatch[near.col]]
    n_row, n_col, n_dist = near.row[same], near.col[same], near.data[same]
    del near, same
    wgt = np.exp(-0.5 * (n_dist / (0.6 * smooth_radius * a_px)) ** 2)
    del n_dist
    sm = sparse.coo_matrix((wgt, (n_row, n_col)), shape=(len(inpatch),) * 2)
    del wgt, n_row, n_col
    sm = sm.tocsr()
    sm = sm + sparse.identity(len(inpatch), format="csr")
    m_s = sm @ acc_m[inpatch]
    v_s = sm @ acc_v[inpatch]
    basis = _basis(theta_u, spacing)
    mmat = m_s.reshape(-1, 2, 2)
    det = np.linalg.det(mmat)
    solid = det > 1e-6 * np.maximum(np.abs(mmat).sum(axis=(1, 2)) ** 2, 1e-12)
    fitted = np.einsum("nij,njk->nik", v_s.reshape(-1, 2, 2)[solid], np.linalg.inv(mmat[solid]))
    basis[inpatch[solid]] = fitted
    del sm, m_s, v_s, mmat, det, solid, fitted, acc_m, acc_v
    bad_links, conflicts = _doubted_links(doubted_p, doubted_q, doubted_v, nm, basis, tolerance * a_f, n)
    del doubted_p, doubted_q, doubted_v
    # misfit: distance from where the linked neighbours put each column
    pred_p = pts[q] - np.einsum("eij,ej->ei", basis[q], dn)
    pred_q = pts[p] + np.einsum("eij,ej->ei", basis[p], dn)
    cnt = np.bincount(p, minlength=n) + np.bincount(q, minlength=n)
    sx = np.bincount(p, weights=pred_p[:, 0], minlength=n) + np.bincount(q, weights=pred_q[:, 0], minlength=n)
    sy = np.bincount(p, weights=pred_p[:, 1], minlength=n) + np.bincount(q, weights=pred_q[:, 1], minlength=n)
    del pred_p, pred_q, dn
    with np.errstate(invalid="ignore", divide="ignore"):
        misfit = np.hypot(sx / cnt - pts[:, 0], sy / cnt - pts[:, 1]) / a_f
    misfit[cnt == 0] = np.inf
    # the column's position averaged with where its neighbours put it (less noisy)
    fitted = np.stack([(pts[:, 0] + sx) / (1 + cnt), (pts[:, 1] + sy) / (1 + cnt)], axis=1)
    if shape is not None:
        # a column cut by the image border peaks too far inside: its neighbours place it
        h, w = shape
        edge = np.minimum(np.minimum(pts[:, 0], w - 1 - pts[:, 0]), np.minimum(pts[:, 1], h - 1 - pts[:, 1]))
        near = (edge < 0.45 * a_px) & (cnt > 0)
        fitted[near, 0] = sx[near] / cnt[near]
        fitted[near, 1] = sy[near] / cnt[near]
    a_med = float(np.median(spacing[inpatch])) if len(inpatch) else a_f
    return LatticeGraph(xy=pts, patch=patch, nm=nm, basis=basis, conflicts=conflicts.astype(np.int64),
                        links=np.stack([p, q], axis=1), misfit=misfit, a_fine=a_med, fitted=fitted,
                        bad_links=bad_links, orientation=theta_u)
