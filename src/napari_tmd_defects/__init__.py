"""Find and classify point defects in HAADF-STEM images of 2D TMD monolayers."""

from ._version import __version__

from .materials import CLASS_COLORS, CLASS_KEYS, MATERIALS, Material, get_material
from .simulation import GroundTruth, SimulatedImage, simulate
from .analysis import Result  # noqa: E402  (after the modules it builds on)
from .pipeline import analyze  # noqa: E402

__all__ = [
    "CLASS_COLORS",
    "CLASS_KEYS",
    "MATERIALS",
    "GroundTruth",
    "Material",
    "Result",
    "SimulatedImage",
    "__version__",
    "analyze",
    "get_material",
    "simulate",
]
