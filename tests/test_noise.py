import json

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


def test_a_frame_without_shot_noise_is_not_poisson_limited_and_lambda_stays_finite():
    # a 2048² frame with read noise only gave λ = inf (invalid JSON in summary.json)
    sim = simulate(shape=2048, pixel_size=0.1, noise=Noise(poisson_lambda=None, gaussian_mu=20), seed=1)
    est = estimate_noise(sim.image)
    assert np.isfinite(est.poisson_lambda) and np.isfinite(est.snr)
    assert not est.poisson_limited and est.poisson_lambda > 1000  # a lower bound, far above any dose trained
    assert "not Poisson-limited" in est.describe() and "inf" not in est.describe()
    json.dumps({"lambda": est.poisson_lambda, "snr": est.snr}, allow_nan=False)
    assert est.gaussian_mu == pytest.approx(20, rel=0.1)
    # a shot-noise-limited frame of the same size is reported as such
    shot = simulate(shape=384, pixel_size=0.1, noise=Noise(poisson_lambda=12, gaussian_mu=20), seed=2)
    e2 = estimate_noise(shot.image)
    assert e2.poisson_limited and e2.poisson_lambda == pytest.approx(12, rel=0.3)
    assert "not Poisson-limited" not in e2.describe()


def test_histogram_order_statistics_equal_numpy(rng):
    from napari_tmd_defects.noise import _Histogram

    q = np.linspace(0.02, 0.98, 17)
    for v in (rng.normal(size=5000), rng.integers(0, 5, size=3001).astype(float), rng.exponential(size=7) ** 3,
              np.full(100, 2.5)):
        h = _Histogram(v)
        edges = np.quantile(v, q)
        assert np.array_equal(h.quantiles(q), edges)
        assert np.array_equal(h.count_le(edges, v), np.searchsorted(edges, v, side="right"))


@pytest.mark.parametrize("kind", ["smooth", "plateaus", "flat half"])
def test_local_peaks_are_skimage_peak_local_max(rng, kind):
    from scipy import ndimage as ndi
    from skimage.feature import peak_local_max

    from napari_tmd_defects.noise import _local_peaks

    img = ndi.gaussian_filter(rng.normal(size=(90, 120)), 2.0)
    if kind == "plateaus":
        img = np.round(img * 8)
    elif kind == "flat half":
        img[:45] = img.max()
    for md, border in ((4, 4), (1, 0), (6, 2)):
        ref = peak_local_max(img, min_distance=md, exclude_border=border)
        got = _local_peaks(img, md, border)
        assert len(ref) > 0 and sorted(map(tuple, got)) == sorted(map(tuple, ref))
    assert len(_local_peaks(np.ones((30, 30)), 3, 3)) == 0


def test_gaussian_is_ndimage_gaussian_filter(rng):
    from scipy import ndimage as ndi

    from napari_tmd_defects.noise import _gaussian, _transposed

    img = rng.normal(size=(150, 97))
    assert np.array_equal(_transposed(img), img.T)
    np.testing.assert_allclose(_gaussian(img, 2.5), ndi.gaussian_filter(img, 2.5), rtol=0, atol=1e-12)
