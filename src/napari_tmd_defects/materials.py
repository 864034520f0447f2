"""Lattice constants, atomic numbers and defect-class names of 2H-MX2 monolayers.

The six defect classes are the paper's (2DIP-Net, Fig. 1c), in this order:

====  ===================  ==================  ======
id    generic key          MoTe2 name          colour
====  ===================  ==================  ======
0     ``perfect``          ``Perfect``         grey
1     ``vx1``              ``V_Te1``           red
2     ``vx2``              ``V_Te2``           yellow
3     ``vm``               ``V_Mo``            blue
4     ``vx1_vm``           ``V_Te1+V_Mo``      olive
5     ``vx2_vm``           ``V_Te2+V_Mo``      purple
====  ===================  ==================  ======

``V_X1`` is one of the two chalcogen atoms of the X column missing, ``V_X2`` both.
Names follow the material: ``V_S1``, ``V_W``, ``V_Se2+V_W`` ...

Alloys and dopants are *compositions* (:func:`parse_composition`): ``Mo0.8W0.2Te2``,
``WS2(1-x)Se2x`` (fraction unknown: read from the image), ``(Mo,W)(S,Se)2``,
``MoS2:Re`` or ``MoS2:Re0.02`` (dopant on the metal sites). Such a material runs on its
*host* binary (the majority metal and chalcogen, lattice constant by Vegard's law):
:func:`get_material` returns that host, and the site states tell the species apart.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, replace
from functools import lru_cache

__all__ = [
    "CLASS_COLORS",
    "CLASS_KEYS",
    "CHALCOGENS",
    "Composition",
    "MATERIALS",
    "METALS",
    "N_CLASSES",
    "Material",
    "class_index",
    "get_material",
    "parse_composition",
]

#: Generic class keys, index = class id.
CLASS_KEYS: tuple[str, ...] = ("perfect", "vx1", "vx2", "vm", "vx1_vm", "vx2_vm")
N_CLASSES = len(CLASS_KEYS)

#: Paper colours (grey, red, yellow, blue, olive, purple) as RGB in 0..1.
CLASS_COLORS: tuple[tuple[float, float, float], ...] = (
    (0.6, 0.6, 0.6),
    (0.9, 0.1, 0.1),
    (1.0, 0.85, 0.0),
    (0.15, 0.35, 1.0),
    (0.5, 0.5, 0.0),
    (0.6, 0.1, 0.8),
)

#: Number of chalcogen atoms missing from the X column, and whether the M atom is missing.
CLASS_VACANCIES: tuple[tuple[int, bool], ...] = (
    (0, False),
    (1, False),
    (2, False),
    (0, True),
    (1, True),
    (2, True),
)


@dataclass(frozen=True)
class Material:
    """A 2H-MX2 monolayer.

    Attributes
    ----------
    name : str
        Formula, e.g. ``"MoTe2"``.
    metal, chalcogen : str
        Element symbols of M and X.
    a : float
        In-plane lattice constant in Å.
    z_metal, z_chalcogen : int
        Atomic numbers.
    """

    name: str
    metal: str
    chalcogen: str
    a: float
    z_metal: int
    z_chalcogen: int

    @property
    def class_names(self) -> tuple[str, ...]:
        """Class names of this material, index = class id (e.g. ``V_S1`` for MoS2)."""
        x, m = self.chalcogen, self.metal
        return (
            "Perfect",
            f"V_{x}1",
            f"V_{x}2",
            f"V_{m}",
            f"V_{x}1+V_{m}",
            f"V_{x}2+V_{m}",
        )

    @property
    def bond_length(self) -> float:
        """Projected M-X distance in Å (a/sqrt(3))."""
        return self.a / math.sqrt(3.0)

    @property
    def cell_area_nm2(self) -> float:
        """Area of one unit cell (one MX2 formula unit) in nm² (sqrt(3)/2 a²)."""
        return math.sqrt(3.0) / 2.0 * (self.a / 10.0) ** 2


MATERIALS: dict[str, Material] = {
    m.name: m
    for m in (
        Material("MoTe2", "Mo", "Te", 3.52, 42, 52),
        Material("MoS2", "Mo", "S", 3.16, 42, 16),
        Material("MoSe2", "Mo", "Se", 3.29, 42, 34),
        Material("WS2", "W", "S", 3.15, 74, 16),
        Material("WSe2", "W", "Se", 3.28, 74, 34),
    )
}


#: Atomic numbers of the elements a metal site may hold (host metals and dopants).
METALS: dict[str, int] = {
    "Ti": 22, "V": 23, "Cr": 24, "Mn": 25, "Fe": 26, "Co": 27, "Nb": 41, "Mo": 42, "Ru": 44,
    "Rh": 45, "Ta": 73, "W": 74, "Re": 75, "Pt": 78,
}
#: Atomic numbers of the elements a chalcogen site may hold.
CHALCOGENS: dict[str, int] = {"O": 8, "S": 16, "Se": 34, "Te": 52}
#: Lattice constants (Å) for Vegard's law over the alloy's end members (2H phases;
#: 2H-WTe2 from first-principles values, it is not a stable bulk phase).
_VEGARD_A = {("Mo", "S"): 3.16, ("Mo", "Se"): 3.29, ("Mo", "Te"): 3.52,
             ("W", "S"): 3.15, ("W", "Se"): 3.28, ("W", "Te"): 3.55}


@dataclass(frozen=True)
class Composition:
    """What a 2H-MX2 layer is made of, parsed from a formula.

    Attributes
    ----------
    formula : str
        The formula as given (whitespace removed).
    metals, chalcogens : tuple of (symbol, fraction or None)
        Species of the metal and chalcogen sites with their site fractions (summing to 1);
        ``None`` where the formula leaves the fraction open (``x``, ``(Mo,W)``).
    dopants : tuple of (symbol, fraction or None)
        Dopant species on the metal sites (``MoS2:Re0.02``: 2 % of the metal sites).
    """

    formula: str
    metals: tuple[tuple[str, float | None], ...]
    chalcogens: tuple[tuple[str, float | None], ...]
    dopants: tuple[tuple[str, float | None], ...] = ()

    @property
    def host_metal(self) -> str:
        """The majority (or first-named) metal that forms a known host with a listed
        chalcogen (``(Cr,W)S2``: W), else the majority (or first-named) one."""
        return _majority(self.metals, lambda m: any(m + x + "2" in MATERIALS for x, _ in self.chalcogens))

    @property
    def host_chalcogen(self) -> str:
        """The majority (or first-named) chalcogen that forms a known host with
        :attr:`host_metal`, else the majority (or first-named) one."""
        metal = self.host_metal
        return _majority(self.chalcogens, lambda x: metal + x + "2" in MATERIALS)

    @property
    def metal_species(self) -> tuple[str, ...]:
        """Every species that may stand on a metal site (alloy metals, then dopants)."""
        return tuple(dict.fromkeys([m for m, _ in self.metals] + [d for d, _ in self.dopants]))

    @property
    def chalcogen_species(self) -> tuple[str, ...]:
        return tuple(m for m, _ in self.chalcogens)

    @property
    def is_binary(self) -> bool:
        """One metal, one chalcogen, no dopant."""
        return len(self.metals) == 1 and len(self.chalcogens) == 1 and not self.dopants

    @staticmethod
    def shares(group: tuple[tuple[str, float | None], ...]) -> dict[str, float]:
        """Site fractions of ``metals`` or ``chalcogens`` with open fractions as equal shares
        of what the given ones leave."""
        known = sum(f for _, f in group if f is not None)
        n_open = sum(f is None for _, f in group)
        return {s: (f if f is not None else max(1.0 - known, 0.0) / n_open) for s, f in group}

    @property
    def lattice_constant(self) -> float:
        """In-plane lattice constant by Vegard's law over the end members, Å (open fractions
        count as equal shares)."""
        ms, xs = self.shares(self.metals), self.shares(self.chalcogens)
        a = w = 0.0
        for m, fm in ms.items():
            for x, fx in xs.items():
                if (m, x) in _VEGARD_A:
                    a += fm * fx * _VEGARD_A[(m, x)]
                    w += fm * fx
        host = MATERIALS.get(self.host_metal + self.host_chalcogen + "2")
        return a / w if w > 0 or host is None else host.a

    @property
    def host(self) -> Material:
        """The host binary :class:`Material` with the composition's lattice constant."""
        key = self.host_metal + self.host_chalcogen + "2"
        if key not in MATERIALS:
            raise ValueError(f"{self.formula}: no known host {key}; hosts are {', '.join(MATERIALS)}")
        m = MATERIALS[key]
        return m if self.is_binary else replace(m, a=round(self.lattice_constant, 4))


def _majority(group, ok=lambda s: True) -> str:
    """The species of ``group`` with the largest given fraction (the first named on a tie,
    or where fractions are open) among those ``ok`` accepts, else regardless of ``ok``."""
    known = [(f, -i, s) for i, (s, f) in enumerate(group) if f is not None]
    order = [s for _, _, s in sorted(known, reverse=True)] if len(known) == len(group) and known else [
        s for s, _ in group]
    return next((s for s in order if ok(s)), order[0])


_AMOUNT = r"(?:1-x|(?:\d*\.?\d+)?(?:\(1-x\)|\(x\)|x)?)"
_TOKEN = re.compile(r"\(([A-Za-z0-9.,\s]+)\)(" + _AMOUNT + r")|([A-Z][a-wyz]?)(" + _AMOUNT + r")")


def _amount(text: str) -> float | None:
    """``"2"`` -> 2, ``""`` -> 1, ``"2(1-x)"``/``"x"`` -> None (an open fraction)."""
    if not text:
        return 1.0
    if "x" in text:
        return None
    return float(text)


def _split_group(inner: str, mult: float | None) -> list[tuple[str, float | None]]:
    parts = [p for p in re.split(r"[,\s]+", inner.strip()) if p]
    out: list[tuple[str, float | None]] = []
    if len(parts) > 1:  # (Mo,W): open fractions
        return [(p, None) for p in parts]
    for sym, amt in re.findall(r"([A-Z][a-wyz]?)(\d*\.?\d*)", inner):
        f = float(amt) if amt else None
        out.append((sym, None if (f is None or mult is None) else f * mult))
    if all(f is None for _, f in out) or len(out) == 1:
        return [(s, None if len(out) > 1 else mult) for s, _ in out]
    return out


@lru_cache(maxsize=256)
def parse_composition(formula: str) -> Composition:
    """Parse a 2H-MX2 formula, alloy or doped: ``MoTe2``, ``Mo0.8W0.2Te2``, ``WS2(1-x)Se2x``,
    ``(Mo,W)(S,Se)2``, ``Mo(S0.5Se0.5)2``, ``MoSSe``, ``MoS2:Re``, ``WSe2:V0.02,Cr``.

    Raises
    ------
    ValueError
        With the reason, for anything that is not a formula of known metals and chalcogens.
    """
    text = re.sub(r"\s+", "", str(formula))
    for name in MATERIALS:  # binaries, any case
        if text.lower() == name.lower():
            m = MATERIALS[name]
            return Composition(name, ((m.metal, 1.0),), ((m.chalcogen, 1.0),))
    base, _, dop = text.partition(":")
    if not base:
        raise ValueError(f"empty material formula {formula!r}")
    items: list[tuple[str, float | None]] = []
    pos = 0
    for mt in _TOKEN.finditer(base):
        if mt.start() != pos:
            break
        pos = mt.end()
        if mt.group(1) is not None:
            items += _split_group(mt.group(1), _amount(mt.group(2)))
        else:
            items.append((mt.group(3), _amount(mt.group(4))))
    if pos != len(base) or not items:
        raise ValueError(f"cannot read the material formula {formula!r} (e.g. MoTe2, Mo0.8W0.2Te2, "
                         "WS2(1-x)Se2x, (Mo,W)(S,Se)2, MoS2:Re0.02)")
    unknown = [s for s, _ in items if s not in METALS and s not in CHALCOGENS]
    if unknown:
        raise ValueError(f"{formula!r}: unknown element(s) {', '.join(unknown)}; metals "
                         f"{', '.join(METALS)}, chalcogens {', '.join(CHALCOGENS)}")
    metals = _normalise([(s, f) for s, f in items if s in METALS], formula, "metal")
    chalcs = _normalise([(s, f) for s, f in items if s in CHALCOGENS], formula, "chalcogen")
    dopants: list[tuple[str, float | None]] = []
    for d in filter(None, re.split(r"[,+]", dop)):
        md = re.fullmatch(r"([A-Z][a-wyz]?)(\d*\.?\d+)?(%)?", d)
        if md is None or md.group(1) not in METALS:
            raise ValueError(f"{formula!r}: cannot read the dopant {d!r} (a metal, e.g. Re or Re0.02)")
        f = float(md.group(2)) / (100.0 if md.group(3) else 1.0) if md.group(2) else None
        if f is not None and not 0.0 < f < 1.0:
            raise ValueError(f"{formula!r}: dopant fraction {f} is not between 0 and 1")
        dopants.append((md.group(1), f))
    comp = Composition(text, tuple(metals), tuple(chalcs), tuple(dopants))
    comp.host  # a known host, or a clear error
    return comp


def _normalise(group, formula, what):
    if not group:
        raise ValueError(f"{formula!r} names no {what}")
    merged: dict[str, float | None] = {}
    for s, f in group:
        if s in merged:
            merged[s] = None if (f is None or merged[s] is None) else merged[s] + f
        else:
            merged[s] = f
    if len(merged) == 1:
        return [(s, 1.0) for s in merged]
    if any(f is None for f in merged.values()):
        return [(s, None) for s in merged]
    tot = sum(merged.values())
    if tot <= 0:
        raise ValueError(f"{formula!r}: the {what} amounts sum to zero")
    return [(s, f / tot) for s, f in merged.items()]


def get_material(material: "str | Material | Composition") -> Material:
    """Return the :class:`Material` called ``material`` (case-insensitive); for an alloy or
    doped formula (see :func:`parse_composition`), its host binary with the alloy's
    lattice constant.

    Raises
    ------
    ValueError
        If the material is unknown; the message lists the known ones.
    """
    if isinstance(material, Material):
        return material
    if isinstance(material, Composition):
        return material.host
    for name, m in MATERIALS.items():
        if name.lower() == str(material).lower():
            return m
    try:
        return parse_composition(str(material)).host
    except ValueError as err:
        raise ValueError(
            f"unknown material {material!r}; known materials: {', '.join(MATERIALS)}, or an alloy or "
            f"doped formula of them ({err})"
        ) from None


def class_index(name: str, material: str | Material = "MoTe2") -> int:
    """Class id of a class given by its material name, generic key or id string.

    ``class_index("V_Te1")``, ``class_index("vx1")`` and ``class_index("1")`` are all 1.
    """
    mat = get_material(material)
    key = str(name).strip()
    if key.isdigit() and int(key) < N_CLASSES:
        return int(key)
    for i, (generic, specific) in enumerate(zip(CLASS_KEYS, mat.class_names)):
        if key.lower() in (generic, specific.lower()):
            return i
    raise ValueError(
        f"unknown defect class {name!r} for {mat.name}; "
        f"expected one of {', '.join(mat.class_names)}"
    )
