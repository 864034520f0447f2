"""Shared by the models: device choice, cancellation, progress, and weight files.

Weight files are ``torch.save`` dictionaries ``{"state_dict": ..., "card": {...}}``;
the card (also written next to the file as JSON) says how the model was built and
trained and what it scored. Shipped defaults live in ``napari_tmd_defects/weights/``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

__all__ = [
    "Cancelled",
    "ProgressCallback",
    "WeightsError",
    "check_cancel",
    "default_weights",
    "load_weights",
    "resolve_device",
    "save_weights",
]

#: ``progress(done, total)``; called from worker code, must be cheap.
ProgressCallback = Callable[[int, int], None]
#: ``cancel()`` returns True when the user asked to stop.
CancelCallback = Callable[[], bool]

WEIGHTS_DIR = Path(__file__).parent / "weights"


class Cancelled(Exception):
    """Raised inside long computations when the caller's ``cancel()`` returns True."""


class WeightsError(RuntimeError):
    """A weights file is missing, unreadable or does not fit the model; names the file."""


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
