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
"""

from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = [
    "CLASS_COLORS",
    "CLASS_KEYS",
    "MATERIALS",
    "N_CLASSES",
    "Material",
    "class_index",
    "get_material",
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


def get_material(material: str | Material) -> Material:
    """Return the :class:`Material` called ``material`` (case-insensitive).

    Raises
    ------
    ValueError
        If the material is unknown; the message lists the known ones.
    """
    if isinstance(material, Material):
        return material
    for name, m in MATERIALS.items():
        if name.lower() == str(material).lower():
            return m
    raise ValueError(
        f"unknown material {material!r}; known materials: {', '.join(MATERIALS)}"
    )


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
