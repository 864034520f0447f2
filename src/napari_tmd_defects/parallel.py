"""Threads for the NumPy and SciPy stages (filters, FFTs, medians release the GIL).

The networks run on torch's threads; the array stages around them (the work image, the
vacuum's lattice amplitude, the classifier's normalisation) would otherwise use one core.
They are split into independent pieces (bands of rows with their filter's reach, one
reflection each) whose results are the whole array's value for value, and the pieces run
on as many threads as torch uses: ``torch.set_num_threads`` and ``--threads`` set both, and
the worker processes of a batch (``OMP_NUM_THREADS=1``) stay on one thread each.
"""

from __future__ import annotations

import os
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Iterable, TypeVar

import numpy as np

__all__ = ["cpu_threads", "filter_rows", "row_bands", "thread_map"]

T = TypeVar("T")
R = TypeVar("R")

#: Never more threads than this, whatever the machine has.
MAX_THREADS = 16
#: :func:`row_bands`: no band of fewer rows (a thread's start costs more than it saves).
MIN_BAND_ROWS = 64

_POOL: ThreadPoolExecutor | None = None
_POOL_KEY: tuple[int, int] = (0, 0)  # (process id, threads): a forked child makes its own pool
_LOCK = threading.Lock()
_INSIDE = threading.local()


def cpu_threads() -> int:
    """Threads the array stages may use: torch's intra-op thread count where torch is
    loaded, else ``OMP_NUM_THREADS``, else the CPUs this process may run on."""
    torch = sys.modules.get("torch")
    n = 0
    if torch is not None and hasattr(torch, "get_num_threads"):
        n = int(torch.get_num_threads())
    else:
        env = os.environ.get("OMP_NUM_THREADS", "")
        if env.isdigit():
            n = int(env)
        elif hasattr(os, "sched_getaffinity"):
            n = len(os.sched_getaffinity(0))
        else:
            n = os.cpu_count() or 1
    return max(1, min(n, MAX_THREADS))


def _pool(n: int) -> ThreadPoolExecutor:
    global _POOL, _POOL_KEY
    key = (os.getpid(), n)
    with _LOCK:
        if _POOL is None or _POOL_KEY != key:
            if _POOL is not None and _POOL_KEY[0] == key[0]:
                _POOL.shutdown(wait=False)
            _POOL = ThreadPoolExecutor(max_workers=n, thread_name_prefix="tmd-defects")
            _POOL_KEY = key
        return _POOL


def thread_map(fn: Callable[[T], R], items: Iterable[T]) -> list[R]:
    """``[fn(x) for x in items]``, the calls spread over :func:`cpu_threads` threads (in
    order; serial with one thread, one item, or when called from one of these threads)."""
    items = list(items)
    threads = cpu_threads()
    if min(threads, len(items)) <= 1 or getattr(_INSIDE, "on", False):
        return [fn(x) for x in items]

    def run(x: T) -> R:
        _INSIDE.on = True
        try:
            return fn(x)
        finally:
            _INSIDE.on = False

    return list(_pool(threads).map(run, items))


def row_bands(n_rows: int) -> list[tuple[int, int]]:
    """One contiguous band ``(r0, r1)`` of ``n_rows`` rows per :func:`cpu_threads` thread,
    none under :data:`MIN_BAND_ROWS` rows (fewer bands for a small image)."""
    parts = max(1, min(cpu_threads(), n_rows // MIN_BAND_ROWS))
    edges = np.linspace(0, n_rows, parts + 1).round().astype(int)
    return [(int(a), int(b)) for a, b in zip(edges[:-1], edges[1:]) if b > a]


def filter_rows(fn: Callable[[np.ndarray], np.ndarray], image: np.ndarray, reach: int) -> np.ndarray:
    """``fn(image)`` computed in bands of rows (:func:`row_bands`) on the CPU threads: each
    band is filtered with ``reach`` rows of the image on both sides and cropped, so for a
    filter whose value at a pixel reads only rows within ``reach`` of it (a Gaussian
    truncated at ``reach``, a window of ``2 reach + 1``) the result is ``fn(image)`` value
    for value."""
    h = image.shape[0]
    bands = row_bands(h)
    if len(bands) == 1:
        return fn(image)

    def one(band: tuple[int, int]) -> np.ndarray:
        r0, r1 = band
        a, b = max(0, r0 - reach), min(h, r1 + reach)
        return fn(image[a:b])[r0 - a:r1 - a]

    return np.concatenate(thread_map(one, bands))
