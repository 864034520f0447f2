"""Sites from the image: columns -> local lattice graph -> domains -> sites -> cells.

Every stage is local, so grains, twin and inversion domains, bending and scan
distortion come from the image itself instead of from one fitted lattice:

========================  ==========================================================
:func:`.columns.find_columns`   intensity peaks (sub-pixel, vectorised)
:func:`.graph.index_columns`    neighbour graph, fine-lattice indices, local bases
:func:`.domains.assign_domains` which sublattice is M, X or hollow, per domain
:func:`.cells.build_sites`      sites with local gap filling and boundary flags
:func:`.cells.build_cells`      X-M unit cells with affine frames
:func:`.cells.boundary_lines`   boundary polylines and their length
========================  ==========================================================

:func:`find_domains` runs the first three, :func:`complete_sites` the rest (in between,
the pipeline lets the hexagon detector check each domain's hollow sites);
:func:`find_sites` runs them all.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from ..geometry import nearest_pixel
from ..materials import CHALCOGENS, METALS, get_material, parse_composition
from ..sites import Domain, SiteModel
from .cells import boundary_lines, build_cells, build_sites
from .columns import Columns, WorkImage, find_columns, work_image
from .domains import apply_hollow_votes, assign_domains, mixed_sublattice, roles_by_heights, roles_by_spread
from .graph import LatticeGraph, index_columns

__all__ = ["LatticeState", "brighter_ambiguous", "complete_sites", "find_domains", "find_sites", "measured_a", "x_brighter", "WorkImage",
           "work_image"]

#: Z exponent of the material prior that says which sublattice is brighter.
PRIOR_Z_EXPONENT = 1.7


def x_brighter(material: str) -> bool:
    """True when a full chalcogen column of ``material`` outshines its metal column (Z^1.7,
    averaged over an alloy's species; open fractions as equal shares)."""
    comp = parse_composition(material if isinstance(material, str) else get_material(material).name)

    def mean_z(group):
        return sum(f * table[s] ** PRIOR_Z_EXPONENT for s, f in comp.shares(group).items())

    table = {**METALS, **CHALCOGENS}
    return 2.0 * mean_z(comp.chalcogens) > mean_z(comp.metals)


def brighter_ambiguous(material: str) -> bool:
    """True when ``material`` leaves shares open (``(Mo,W)Se2``, ``MoS2(1-x)Se2x``) and its
    end members disagree on which full column is brighter (Z^1.7): MoSe2's chalcogen, WSe2's
    metal. The prior of :func:`x_brighter` (equal shares) is then a guess; only the site
    spread of an alloyed sublattice can settle it (:func:`.domains.roles_by_spread`)."""
    comp = parse_composition(material if isinstance(material, str) else get_material(material).name)
    if all(f is not None for _, f in comp.metals + comp.chalcogens):
        return False
    table = {**METALS, **CHALCOGENS}
    signs = {2.0 * table[x] ** PRIOR_Z_EXPONENT > table[m] ** PRIOR_Z_EXPONENT
             for m, _ in comp.metals for x, _ in comp.chalcogens}
    return len(signs) > 1


def measured_a(sites) -> float | None:
    """Lattice constant (px) from the local cell areas of the sites (median), or None.

    A unit cell holds three fine-lattice cells: ``sqrt(3)/2 a² = 3 |det [e1 e2]|``.
    """
    if len(sites) < 3:
        return None
    return float(np.median(np.sqrt(2.0 * math.sqrt(3.0) * np.abs(np.linalg.det(sites.basis)))))


@dataclass
class LatticeState:
    """The lattice stages' findings before sites are completed (see :func:`find_domains`)."""

    shape: tuple[int, int]
    work: WorkImage
    columns: Columns
    graph: LatticeGraph
    domain: np.ndarray
    role: np.ndarray
    domains: list[Domain]
    x_brighter: bool
    notes: list[str] = field(default_factory=list)
    #: the sublattice the composition mixes ("M", "X"; None: neither or an explicit prior)
    mixed: str | None = None
    #: the formula's end members disagree on the brighter column (:func:`brighter_ambiguous`)
    ambiguous: bool = False

    def check_hollows(self, points: np.ndarray) -> list[str]:
        """Let points on hollow sites (hexagon centres) check the domains' roles
        (:func:`.domains.apply_hollow_votes`)."""
        notes = apply_hollow_votes(self.graph, self.domain, self.role, self.domains, points, self.x_brighter,
                                   self.work.noise, work=self.work, mixed=self.mixed, ambiguous=self.ambiguous)
        self.notes.extend(notes)
        return notes


def find_domains(image: np.ndarray, a_px: float, material: str = "MoTe2", *, work: WorkImage | None = None,
                 x_is_brighter: bool | None = None, exclude: np.ndarray | None = None) -> LatticeState:
    """Columns, the lattice graph and the domains with their roles (stages 1-3).

    Parameters
    ----------
    image : (rows, cols) array
        Grey levels (finite).
    a_px : float
        Lattice constant, px (from the image's lattice, not from metadata).
    material : str
        Sets the prior on which sublattice is brighter.
    work : WorkImage, optional
        The working image if already made (:func:`.columns.work_image`).
    x_is_brighter : bool, optional
        Override the material's prior (else, where metal and chalcogen columns are about
        equally bright, an alloy's mixed sublattice is told by its spread:
        :func:`.domains.roles_by_spread`).
    exclude : (rows, cols) bool array, optional
        Pixels whose peaks are not columns (an inset pasted into a figure panel).
    """
    img = np.asarray(image)
    if work is None:
        work = work_image(img, a_px)
    cols = find_columns(work)
    if exclude is not None and len(cols):
        keep = ~np.asarray(exclude, bool)[nearest_pixel(cols.xy, img.shape)]
        cols = Columns(xy=cols.xy[keep], height=cols.height[keep])
    graph = index_columns(cols.xy, a_px, shape=img.shape)
    prior = x_brighter(material) if x_is_brighter is None else bool(x_is_brighter)
    mixed = mixed_sublattice(material, PRIOR_Z_EXPONENT) if x_is_brighter is None else None
    domain, role, domains = assign_domains(graph, work, prior, alloyed=mixed is not None)
    ambiguous = x_is_brighter is None and brighter_ambiguous(material)
    notes = roles_by_spread(graph, work, domain, role, domains, mixed, ambiguous)
    if mixed is None and not ambiguous:
        notes += roles_by_heights(graph, work, domain, role, domains, prior)
    return LatticeState(shape=tuple(img.shape), work=work, columns=cols, graph=graph, domain=domain, role=role,
                        domains=domains, x_brighter=prior, notes=notes, mixed=mixed, ambiguous=ambiguous)


def complete_sites(state: LatticeState) -> SiteModel:
    """Sites with local gap filling, cells and boundaries from the domains (stages 4-6)."""
    graph = state.graph
    sites, strays = build_sites(graph, state.columns, state.domain, state.role, state.domains, state.work,
                                state.shape)
    cells = build_cells(sites, state.domains, state.shape)
    a_meas = measured_a(sites) or graph.a_fine * math.sqrt(3.0)
    lines, length = boundary_lines(sites, state.shape, a_meas) if len(state.domains) > 1 else ([], 0.0)
    return SiteModel(sites=sites, domains=state.domains, cells=cells, boundary_lines=lines,
                     boundary_length_px=length, strays=strays, a_px=a_meas, n_columns=len(state.columns),
                     notes=list(state.notes))


def find_sites(image: np.ndarray, a_px: float, material: str = "MoTe2", *, work: WorkImage | None = None,
               x_is_brighter: bool | None = None) -> SiteModel:
    """All sites, domains, cells and boundaries of an image (:func:`find_domains`, then
    :func:`complete_sites`); see :func:`find_domains` for the parameters."""
    return complete_sites(find_domains(image, a_px, material, work=work, x_is_brighter=x_is_brighter))
