"""Shared fixtures."""

import os

import numpy as np
import pytest

from napari_tmd_defects.geometry import box_iou

# torch defaults to every core; keep CI (2 cores) predictable
os.environ.setdefault("OMP_NUM_THREADS", "2")


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


def structure_stress_frame(material: str, index: int, k: int, size: int = 384):
    """Frame ``k`` of material ``index`` of ``benchmarks/structure_stress.py`` (its seeds and
    conditions, ``frames()``): ``(simulation, true pixel size Å/px)``."""
    from napari_tmd_defects.datasets import sample_conditions
    from napari_tmd_defects.simulation import simulate

    seed = 700_000 + 1000 * index
    rng = np.random.default_rng(seed)
    for _ in range(k + 1):
        kw = sample_conditions("structure", rng, (size, size), pixel_size=(0.07, 0.14), rotation="random",
                               defect_fraction=(0.05, 0.15))
    return simulate(material, size, seed=seed + k, **kw), kw["pixel_size"]


# Ground-truth stand-ins for the two networks: they return the simulator's true
# hexagons and classes, to test bookkeeping around the models (not the models).
# The hexagons are in image coordinates: use them on frames at rotation 0.
class TruthDetector:
    card = {"name": "ground-truth hexagons"}

    def __init__(self, truth):
        self.truth = truth

    def detect(self, image, pixel_size, material="MoTe2", progress=None, cancel=None):
        return self.truth.hex_box, np.ones(len(self.truth.hex_box))


class TruthClassifier:
    card = {"name": "ground-truth classes"}

    def __init__(self, truth):
        self.truth = truth

    def predict(self, image, boxes, pixel_size, material="MoTe2", progress=None, cancel=None, frames=None, box=None):
        if frames is not None:
            # the cell whose X-M midpoint is nearest (frames: canonical cell -> px)
            from napari_tmd_defects.sites import CANONICAL_PARTNER

            mid = np.einsum("nij,j->ni", frames[:, :, :2], 0.5 * CANONICAL_PARTNER) + frames[:, :, 2]
            t = 0.5 * (self.truth.cell_x_site + self.truth.cell_m_site)
            lab = self.truth.cell_label[np.argmin(np.linalg.norm(mid[:, None] - t[None], axis=-1), axis=1)]
        else:
            iou = box_iou(boxes, self.truth.cell_box)
            lab = self.truth.cell_label[iou.argmax(axis=1)]
        n = len(lab)
        p = np.full((n, 6), 0.02)
        p[np.arange(n), lab] = 0.9
        p[0] = [0.5, 0.5, 0, 0, 0, 0]  # one uncertain cell
        return p


@pytest.fixture
def array_threads():
    """``array_threads(n)``: the array stages (:mod:`napari_tmd_defects.parallel`) on ``n``
    threads whatever the machine has (they follow torch's thread count; restored after)."""
    import torch

    prev = torch.get_num_threads()

    def use(n: int) -> None:
        torch.set_num_threads(n)

    yield use
    torch.set_num_threads(prev)
