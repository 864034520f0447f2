"""Find and classify point defects in HAADF-STEM images of 2D TMD monolayers."""

__version__ = "0.1.0"

from .materials import CLASS_COLORS, CLASS_KEYS, MATERIALS, Material, get_material
from .simulation import GroundTruth, SimulatedImage, simulate

__all__ = [
    "CLASS_COLORS",
    "CLASS_KEYS",
    "MATERIALS",
    "GroundTruth",
    "Material",
    "SimulatedImage",
    "__version__",
    "get_material",
    "simulate",
]
