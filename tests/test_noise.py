import numpy as np
import pytest

from napari_tmd_defects.noise import estimate_noise
from napari_tmd_defects.simulation import Noise, simulate


@pytest.mark.parametrize("lam, mu, pixel_size", [(5, 20, 0.1), (12, 20, 0.09), (40, 10, 0.12), (10, 20, 0.05)])
def test_estimates_the_simulated_noise(lam, mu, pixel_size):
    sim = simulate(shape=384, pixel_size=pixel_size, noise=Noise(poisson_lambda=lam, gaussian_mu=mu), seed=1)
    est = estimate_noise(sim.image, a_px=3.52 / pixel_size)
    assert est.poisson_lambda == pytest.approx(lam, rel=0.3)
    assert est.gaussian_mu == pytest.approx(mu, rel=0.3)
    assert "λ" in est.describe()


def test_no_shot_noise_and_bad_input():
    sim = simulate(shape=256, pixel_size=0.1, noise=Noise(poisson_lambda=None, gaussian_mu=20), seed=1)
    est = estimate_noise(sim.image)
    assert est.poisson_lambda > 200 and est.gaussian_mu == pytest.approx(20, rel=0.3)
    with pytest.raises(ValueError):
        estimate_noise(np.ones((64, 64)))
    with pytest.raises(ValueError):
        estimate_noise(np.zeros((3, 64, 64)))
