import copy

import torch
import torch.nn as nn

from napari_tmd_defects import runtime


def _net(seed=0):
    torch.manual_seed(seed)
    m = nn.Sequential(nn.Conv2d(2, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU6(inplace=True),
                      nn.Conv2d(8, 4, 3, stride=2, padding=1), nn.BatchNorm2d(4), nn.ReLU(inplace=True))
    for bn in (m[1], m[4]):  # non-trivial running statistics, so folding them matters
        bn.running_mean.uniform_(-0.5, 0.5)
        bn.running_var.uniform_(0.5, 2.0)
        bn.weight.data.uniform_(0.5, 1.5)
    return m.eval()


def test_optimized_module_matches_eager_and_is_cached_per_weights():
    m = _net()
    fast = runtime.optimize_for_cpu(m)
    assert fast is not m
    x = torch.randn(3, 2, 20, 17)
    with torch.inference_mode():
        ref = m(x)
        for shape in ((3, 2, 20, 17), (1, 2, 9, 33)):  # any input size
            xi = torch.randn(*shape)
            torch.testing.assert_close(fast(xi), m(xi), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(fast(x), ref, rtol=1e-5, atol=1e-5)
    # the same weights share one compiled module; other weights get their own
    assert runtime.optimize_for_cpu(copy.deepcopy(m)) is fast
    assert runtime.optimize_for_cpu(_net(seed=1)) is not fast


def test_optimization_switched_off_or_impossible_returns_the_module(monkeypatch):
    m = _net()
    monkeypatch.setattr(runtime, "OPTIMIZE_CPU_INFERENCE", False)
    assert runtime.optimize_for_cpu(m) is m
    monkeypatch.setattr(runtime, "OPTIMIZE_CPU_INFERENCE", True)
    half = copy.deepcopy(m).half()  # float16: left eager
    assert runtime.optimize_for_cpu(half) is half

    class Unscriptable(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(1, 1, 3)

        def forward(self, x, *extra):  # varargs: TorchScript cannot compile this
            return self.conv(x)

    u = Unscriptable().eval()
    assert runtime.optimize_for_cpu(u) is u


def test_rewrite_is_compiled_once_and_a_failing_one_is_skipped():
    m = _net(seed=2)
    calls = []

    def drop_last_relu(module):  # a visibly different module, to see which one is compiled
        calls.append(1)
        return nn.Sequential(*list(module)[:-1])

    fast = runtime.optimize_for_cpu(m, drop_last_relu)
    assert runtime.optimize_for_cpu(copy.deepcopy(m), drop_last_relu) is fast and len(calls) == 1
    x = torch.randn(2, 2, 12, 12)
    with torch.inference_mode():
        assert (fast(x) < 0).any()  # the rewritten module was compiled, not the original
        torch.testing.assert_close(fast(x), m[:-1](x), rtol=1e-5, atol=1e-5)

    def broken(module):
        raise TypeError("not a module this rewrite knows")

    with torch.inference_mode():
        torch.testing.assert_close(runtime.optimize_for_cpu(m, broken)(x), m(x), rtol=1e-5, atol=1e-5)


def _rss_kib() -> int:
    with open("/proc/self/status") as fh:
        return next(int(line.split()[1]) for line in fh if line.startswith("VmRSS:"))


def test_release_memory_hands_freed_heap_back():
    import sys

    import numpy as np
    import pytest

    if not sys.platform.startswith("linux") or not runtime.release_memory():
        pytest.skip("no glibc malloc_trim here")
    # small buffers come from the heap; freeing every other one leaves it fragmented
    held = [np.ones(2048 + (i % 7)) for i in range(4000)]  # ~66 MB
    del held[::2]
    before = _rss_kib()
    assert runtime.release_memory() is True
    assert before - _rss_kib() > 10_000  # KiB: most of the ~33 MB freed left the process
    assert float(held[-1].sum()) == 2048 + 3999 % 7  # what is still held is intact
