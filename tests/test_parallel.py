"""The array stages' threads: same values as one thread, in order, no nested deadlock."""

import threading

import numpy as np
import pytest
from scipy import ndimage as ndi

import napari_tmd_defects.parallel as parallel
from napari_tmd_defects.parallel import cpu_threads, filter_rows, row_bands, thread_map


@pytest.fixture
def threads(array_threads):
    return array_threads


def test_cpu_threads_follow_torch_and_the_cap(monkeypatch):
    torch = pytest.importorskip("torch")
    prev = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        assert cpu_threads() == 1
        torch.set_num_threads(2)
        assert cpu_threads() == 2
        monkeypatch.setattr(parallel, "MAX_THREADS", 1)
        assert cpu_threads() == 1
    finally:
        torch.set_num_threads(prev)


def test_thread_map_keeps_the_order_and_uses_several_threads(threads):
    threads(3)
    seen = set()

    def f(x):
        seen.add(threading.get_ident())
        return x * x

    assert thread_map(f, range(50)) == [x * x for x in range(50)]
    assert threading.get_ident() not in seen  # the calls ran on the pool's threads


def test_a_thread_map_inside_a_thread_map_runs_serially(threads):
    threads(2)  # both pool threads busy with the outer calls: a nested pool call would wait for ever

    def outer(x):
        return sum(thread_map(lambda y: x * y, range(4)))

    assert thread_map(outer, range(6)) == [6 * x for x in range(6)]


def test_thread_map_passes_errors_on(threads):
    threads(2)

    def f(x):
        if x == 3:
            raise ValueError("three")
        return x

    with pytest.raises(ValueError, match="three"):
        thread_map(f, range(6))


def test_row_bands_cover_every_row_once(threads):
    threads(4)
    for n in (1, 63, 64, 200, 1000, 1001):
        bands = row_bands(n)
        rows = np.concatenate([np.arange(a, b) for a, b in bands])
        assert np.array_equal(rows, np.arange(n))
        assert len(bands) <= max(1, n // 64)


@pytest.mark.parametrize("fn, reach", [
    (lambda b: ndi.gaussian_filter(b, 2.3, mode="nearest"), int(4 * 2.3 + 0.5)),
    (lambda b: ndi.minimum_filter(b, 7, mode="nearest"), 3),
])
def test_filter_rows_gives_the_whole_image_filter_value_for_value(threads, fn, reach):
    img = np.random.default_rng(0).random((517, 301)).astype(np.float32)
    whole = fn(img)
    for n in (1, 2, 5):
        threads(n)
        assert np.array_equal(filter_rows(fn, img, reach), whole)
    # a reach short of the filter's: the band edges show (the test above can fail)
    threads(2)
    assert not np.array_equal(filter_rows(fn, img, 0), whole)


def test_a_forked_process_gets_its_own_pool(monkeypatch, threads):
    threads(2)
    thread_map(abs, [1, -2])
    pool = parallel._POOL
    monkeypatch.setattr(parallel.os, "getpid", lambda: -1)  # as in a child forked after the pool started
    assert thread_map(abs, [1, -2]) == [1, 2]
    assert parallel._POOL is not pool
