"""Sample data contribution: the built-in simulated MoTe2 frame."""

from __future__ import annotations

from typing import Any


def make_sample_data() -> list[tuple[Any, dict[str, Any], str]]:
    """Simulated defective MoTe2 (512 x 512 px at 0.09 Å/px), as an image layer.

    The layer is scaled in Å; its metadata carry the pixel size and the ground truth.
    """
    from ..datasets import sample_image

    sim = sample_image()
    t = sim.truth
    meta = {"pixel_size_A": t.pixel_size, "material": t.material, "ground_truth": t.to_dict()}
    return [
        (
            sim.image,
            {
                "name": "MoTe2 sample (simulated)",
                "scale": (t.pixel_size, t.pixel_size),
                "units": ("angstrom", "angstrom"),
                "metadata": meta,
                "colormap": "gray",
            },
            "image",
        )
    ]
