"""Shared by the models: device choice, cancellation, progress, and weight files.

Weight files are ``torch.save`` dictionaries ``{"state_dict": ..., "card": {...}}``;
the card (also written next to the file as JSON) says how the model was built and
trained and what it scored. Shipped defaults live in ``napari_tmd_defects/weights/``.
"""

from __future__ import annotations

import hashlib
import json
import threading
import warnings
from pathlib import Path
from typing import Any, Callable

__all__ = [
    "Cancelled",
    "ProgressCallback",
    "WeightsError",
    "check_cancel",
    "default_weights",
    "load_weights",
    "optimize_for_cpu",
    "release_memory",
    "resolve_device",
    "save_weights",
]

#: ``progress(done, total)``; called from worker code, must be cheap.
ProgressCallback = Callable[[int, int], None]
#: ``cancel()`` returns True when the user asked to stop.
CancelCallback = Callable[[], bool]

WEIGHTS_DIR = Path(__file__).parent / "weights"
#: Compile the networks for CPU inference (:func:`optimize_for_cpu`); False: run them eagerly.
OPTIMIZE_CPU_INFERENCE = True
_OPTIMIZED: dict[tuple, Any] = {}
_OPTIMIZE_LOCK = threading.Lock()


class Cancelled(Exception):
    """Raised inside long computations when the caller's ``cancel()`` returns True."""


class WeightsError(RuntimeError):
    """A weights file is missing, unreadable or does not fit the model; names the file."""


_LIBC: Any = None


def release_memory() -> bool:
    """Hand the C heap's freed memory back to the system (glibc ``malloc_trim``); False
    where there is no such call (other C libraries, other systems), which changes nothing.

    Freed blocks of the heap (torch's and numpy's smaller buffers: a network's weights after
    compiling it, a stage's temporaries) otherwise stay resident, and the full-size arrays
    of the next stage, mapped anew, come on top of them (~80 MB after compiling the
    classifier). Takes milliseconds; up to a few tenths of a second on a heap of several
    hundred MB left full of small holes.
    """
    global _LIBC
    if _LIBC is None:
        import ctypes
        import ctypes.util

        try:
            lib = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
            _LIBC = lib if hasattr(lib, "malloc_trim") else False
        except (OSError, TypeError):
            _LIBC = False
    if not _LIBC:
        return False
    _LIBC.malloc_trim(0)
    return True


def check_cancel(cancel: CancelCallback | None) -> None:
    """Raise :class:`Cancelled` if ``cancel`` says so."""
    if cancel is not None and cancel():
        raise Cancelled("cancelled by the user")


def resolve_device(device: str = "auto"):
    """``"auto"`` -> CUDA when available, else CPU; ``"cpu"``; ``"cuda"`` / ``"cuda:N"``.

    Raises
    ------
    ValueError
        If CUDA is asked for but not available, or the name is unknown.
    """
    import torch

    name = str(device or "auto").lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ValueError(
                f"device {device!r} was requested but CUDA is not available here; "
                "use --device cpu (or auto)"
            )
        return torch.device(name)
    raise ValueError(f"unknown device {device!r}; use auto, cpu or cuda")


def default_weights(name: str) -> Path:
    """Path of a shipped weights file, e.g. ``default_weights("detector")``."""
    return WEIGHTS_DIR / f"{name}.pt"


def save_weights(path: str | Path, state_dict: dict, card: dict[str, Any], half: bool = True) -> Path:
    """Write ``{"state_dict", "card"}`` to ``path`` (floats as float16 if ``half``) and the
    card to ``path`` with suffix ``.json``. Written atomically."""
    import torch

    from .io import atomic_write

    path = Path(path)
    sd = {
        k: (v.detach().cpu().half() if half and v.is_floating_point() else v.detach().cpu())
        for k, v in state_dict.items()
    }
    with atomic_write(path) as fh:
        torch.save({"state_dict": sd, "card": card}, fh)
    with atomic_write(path.with_suffix(".json"), "w") as fh:
        json.dump(card, fh, indent=2)
    return path


def load_weights(path: str | Path) -> tuple[dict, dict[str, Any]]:
    """Read a weights file -> ``(state_dict as float32, card)``.

    Raises
    ------
    WeightsError
        If the file is missing or corrupt (the message names the file).
    """
    import torch

    path = Path(path)
    if not path.exists():
        raise WeightsError(f"weights file not found: {path}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
        sd = obj["state_dict"]
        card = dict(obj.get("card", {}))
    except Exception as exc:
        raise WeightsError(f"weights file {path} is corrupt or not a napari-tmd-defects model ({exc})") from exc
    sd = {k: (v.float() if v.is_floating_point() else v) for k, v in sd.items()}
    return sd, card


def _weights_key(module) -> tuple:
    """The module's class and a hash of its parameters and buffers (same weights, same key)."""
    h = hashlib.blake2b(digest_size=16)
    for name, t in list(module.state_dict().items()):
        h.update(name.encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.detach().cpu().contiguous().numpy().reshape(-1))  # the tensor's buffer: no bytes copy
    return type(module).__qualname__, h.hexdigest()


def optimize_for_cpu(module, rewrite: Callable[[Any], Any] | None = None):
    """``module`` (eval mode, float32, on the CPU) compiled for inference, or ``module`` itself.

    ``rewrite(copy of module)`` (optional) returns an equivalent module to compile instead
    (or None: the module as it is); it runs only when the cache has no compiled module yet.

    TorchScript, frozen and optimised for inference: batch norms folded into the
    convolutions, oneDNN's blocked layout, activations and residual sums fused. The
    outputs equal the eager module's up to float rounding (~1e-6 relative); on 1-2 CPU
    cores the detector's backbone runs ~2-3x faster, the classifier ~1.5x (~1.8x with its
    rewrite). The compilation (~0.3-0.5 s a network) is made once per process, weights and
    rewrite (cached by a hash of the weights). Falls back to the
    eager module where TorchScript is unavailable or fails, or when
    :data:`OPTIMIZE_CPU_INFERENCE` is False.
    """
    import copy

    import torch

    if not OPTIMIZE_CPU_INFERENCE:
        return module
    try:
        if any(p.device.type != "cpu" or p.dtype != torch.float32 for p in module.parameters()):
            return module
        key = (*_weights_key(module), getattr(rewrite, "__qualname__", None))
    except Exception:
        return module
    with _OPTIMIZE_LOCK:
        if key not in _OPTIMIZED:
            try:
                with warnings.catch_warnings(), torch.no_grad():
                    warnings.simplefilter("ignore")  # TorchScript's deprecation notices
                    eager = copy.deepcopy(module).to(memory_format=torch.contiguous_format).eval()
                    if rewrite is not None:
                        try:
                            eager = rewrite(eager) or eager
                        except Exception:  # not a module the rewrite knows: compile it as it is
                            pass
                    _OPTIMIZED[key] = torch.jit.optimize_for_inference(torch.jit.script(eager.eval()))
            except Exception:
                _OPTIMIZED[key] = None
            eager = None
            release_memory()  # the copy and the compiler's temporaries
        fast = _OPTIMIZED[key]
    return module if fast is None else fast
