import numpy as np
import pytest

from napari_tmd_defects.classical import analyze_classical
from napari_tmd_defects.evaluation import score_result
from napari_tmd_defects.simulation import simulate


@pytest.mark.parametrize(
    "material, rotation",
    [("MoTe2", 0.0), ("MoTe2", 23.0), ("MoTe2", -75.0), ("MoS2", 10.0), ("WSe2", 0.0)],
)
def test_classical_reference_on_paper_noise(material, rotation):
    sim = simulate(material, 320, pixel_size=0.1, rotation_deg=rotation, defect_fraction=0.3, seed=2)
    res = analyze_classical(sim.image, 0.1, material)
    s = score_result(res, sim.truth)
    assert s.recall > 0.98 and s.precision > 0.9
    assert s.class_accuracy > 0.97
    assert s.n_duplicates == 0


def test_classical_handles_lattice_free_input():
    res = analyze_classical(np.random.default_rng(0).normal(size=(64, 64)), 0.1)
    assert res.n_cells == 0 and any("no crystal lattice" in w for w in res.warnings)
    res = analyze_classical(np.zeros((20, 20)), 0.1)
    assert res.n_cells == 0 and res.warnings
