"""**Defect analysis** dock widget: image layer, material, pixel size, device -> Run.

The analysis (:func:`napari_tmd_defects.pipeline.analyze`) runs in a napari thread
worker with a progress bar and a Cancel button; results become layers (see
:mod:`._layers`). Errors (missing models or weights, bad input) are shown as a short
message in the widget. ``detector`` / ``classifier`` attributes take model objects
(default None: the shipped weights), so tests and scripts can inject their own.
"""

from __future__ import annotations

import threading
from typing import Any

import napari
from magicgui.widgets import CheckBox, ComboBox, Container, FloatSpinBox, LineEdit, ProgressBar, PushButton
from qtpy.QtCore import QObject, Signal

from ..materials import MATERIALS, get_material
from . import _layers as L
from ._statistics import ClassLegend

_UNIT_TO_A = {"angstrom": 1.0, "ångström": 1.0, "nanometer": 10.0, "picometer": 0.01, "micrometer": 1e4}


class _Relay(QObject):
    """Carries progress from the worker thread to the widget (queued Qt signal)."""

    progress = Signal(int, int)


def pixel_size_of(layer) -> float | None:
    """Å/px of an image layer: ``metadata["pixel_size_A"]``, else its scale when its
    units are lengths; None when unknown."""
    px = layer.metadata.get("pixel_size_A")
    if px:
        return float(px)
    try:
        unit = str(layer.units[-1])
    except (AttributeError, IndexError):
        return None
    if unit in _UNIT_TO_A and float(layer.scale[-1]) != 1.0:
        return float(layer.scale[-1]) * _UNIT_TO_A[unit]
    return None


def describe_error(exc: BaseException) -> str:
    """A one-line message for an exception from the analysis."""
    from ..runtime import Cancelled, WeightsError

    if isinstance(exc, Cancelled):
        return "cancelled; previous results were kept"
    if isinstance(exc, ModuleNotFoundError) and (exc.name or "").startswith("napari_tmd_defects"):
        which = "hexagon detector (CNN-1)" if "detection" in exc.name else "cell classifier (CNN-2)"
        return f"model missing: the {which} is not part of this installation ({exc.name} not found)"
    if isinstance(exc, (WeightsError, FileNotFoundError)):
        return f"model missing: {exc}"
    if isinstance(exc, ImportError):
        return f"cannot load the models: {exc}"
    if isinstance(exc, ValueError):
        return f"cannot analyse this image: {exc}"
    if isinstance(exc, MemoryError):
        return "out of memory: try a smaller image or the CPU"
    return f"analysis failed ({type(exc).__name__}: {exc})"


class AnalysisWidget(Container):
    """Run the defect analysis on an image layer.

    Scripting: ``widget.run()`` analyses synchronously and returns the ``Result``;
    ``widget.start()`` / ``widget.cancel()`` drive the background worker.
    """

    def __init__(self, viewer: napari.viewer.Viewer, detector=None, classifier=None):
        super().__init__(labels=False)
        self._viewer = viewer
        #: Model objects (or weight paths) used instead of the shipped weights.
        self.detector = detector
        self.classifier = classifier
        #: The last Result this widget produced.
        self.result = None
        self._worker = None
        self._cancel_flag = threading.Event()
        self._relay = _Relay()
        self._relay.progress.connect(self._on_progress)

        self._image = ComboBox(label="image", choices=self._image_choices)
        self._material = ComboBox(label="material", choices=list(MATERIALS), value="MoTe2")
        self._composition = LineEdit(label="alloy / dopants", value="",
                                     tooltip="optional formula that replaces the material, e.g. Mo0.8W0.2Te2, "
                                             "WS2(1-x)Se2x, (Mo,W)(S,Se)2, MoS2:Re: metal sites are then read as "
                                             "host, substituent or vacancy, chalcogen columns by their atoms")
        self._pixel = FloatSpinBox(label="pixel size (Å/px)", value=0.0, min=0.0, max=100.0, step=0.001,
                                   tooltip="0 = estimate from the lattice and the material's lattice constant")
        self._pixel.native.setDecimals(4)
        self._pixel.native.setSpecialValueText("estimate")
        self._device = ComboBox(label="device", choices=["auto", "cpu", "cuda"], value="auto")
        self._low = FloatSpinBox(label="low confidence", value=0.6, min=0.0, max=1.0, step=0.05,
                                 tooltip="cells below this confidence are flagged for review")
        self._labels = CheckBox(text="also a Labels layer", value=False)
        self._run_btn = PushButton(text="Run")
        self._cancel_btn = PushButton(text="Cancel", enabled=False)
        self._progress = ProgressBar(value=0, min=0, max=4)
        self._status = L.text_label("")
        form = Container(widgets=[self._image, self._material, self._composition, self._pixel, self._device,
                                  self._low], labels=True)
        buttons = Container(widgets=[self._run_btn, self._cancel_btn], layout="horizontal", labels=False)
        for c in (form, buttons):
            c.margins = (0, 0, 0, 0)
        self.extend([form, self._labels, buttons, self._progress, self._status])
        self._legend = ClassLegend(get_material("MoTe2").class_names)
        self.native.layout().addWidget(self._legend)

        self._run_btn.clicked.connect(self.start)
        self._cancel_btn.clicked.connect(self.cancel)
        self._image.changed.connect(self._on_image)
        self._material.changed.connect(lambda m: self._legend.set_names(get_material(m).class_names))
        L.connect_events(self.native, self._refresh_choices, viewer.layers.events.inserted,
                         viewer.layers.events.removed, viewer.layers.events.reordered, selection=False)
        self.native.destroyed.connect(self._stop_on_close)
        self._on_image(self._image.value)
        self._say(self._model_note())

    # ------------------------------------------------------------------ scripting API
    @property
    def running(self) -> bool:
        return self._worker is not None

    @property
    def status(self) -> str:
        """The message line of the widget."""
        return self._status.value

    def set_image(self, layer) -> None:
        """Choose the image layer (object or name) to analyse (fills pixel size and material)."""
        self._image.value = self._viewer.layers[layer] if isinstance(layer, str) else layer

    def run(self, **overrides: Any):
        """Analyse synchronously (scripts); shows the layers and returns the ``Result``.

        ``overrides`` are passed on to :func:`~napari_tmd_defects.pipeline.analyze`
        (e.g. ``alpha=0.7``). Raises what ``analyze`` raises.
        """
        from ..pipeline import analyze

        layer, kwargs = self._params()
        kwargs.update(overrides)
        res = analyze(L.image_data(layer), **kwargs)
        self._show(res, layer)
        return res

    def start(self) -> None:
        """Start the analysis in a thread worker (the Run button)."""
        if self._worker is not None:
            return
        try:
            layer, kwargs = self._params()
        except ValueError as exc:
            self._say(str(exc))
            return
        from napari.qt.threading import create_worker

        from ..pipeline import analyze

        data = L.image_data(layer)
        self._cancel_flag.clear()
        relay = self._relay

        def job():
            return analyze(data, progress=relay.progress.emit, cancel=self._cancel_flag.is_set, **kwargs)

        self._worker = create_worker(
            job, _start_thread=False,
            _connect={"returned": lambda res: self._show(res, layer), "errored": self._on_error,
                      "finished": self._on_finished},
        )
        self._run_btn.enabled, self._cancel_btn.enabled = False, True
        self._progress.value = 0
        self._say(f"analysing {layer.name} …")
        self._worker.start()

    def cancel(self) -> None:
        """Ask the running analysis to stop (the Cancel button)."""
        if self._worker is not None:
            self._cancel_flag.set()
            self._say("cancelling …")

    # ------------------------------------------------------------------ internals
    def _image_choices(self, _w=None):
        return [(lay.name, lay) for lay in self._viewer.layers if isinstance(lay, napari.layers.Image)]

    def _refresh_choices(self, *_) -> None:
        self._image.reset_choices()  # emits `changed` (-> _on_image) when the choice changes

    def _on_image(self, layer) -> None:
        if layer is None:
            return
        px = pixel_size_of(layer)
        self._pixel.value = px if px else 0.0
        mat = layer.metadata.get("material")
        if mat in MATERIALS:
            self._material.value = mat
            self._composition.value = ""
        elif mat:
            try:
                self._material.value = get_material(mat).name
                self._composition.value = mat
            except ValueError:
                pass

    def _material_text(self) -> str:
        """The composition typed (checked: a clear error if it cannot be read), else the material."""
        from ..materials import parse_composition

        text = self._composition.value.strip()
        if not text:
            return self._material.value
        parse_composition(text)  # raises ValueError with the reason
        return text

    def _params(self) -> tuple[Any, dict[str, Any]]:
        layer = self._image.value
        if layer is None:
            raise ValueError("no image layer: open an image (or File > Open Sample) first")
        return layer, {
            "pixel_size": self._pixel.value or None,
            "material": self._material_text(),
            "device": self._device.value,
            "detector": self.detector,
            "classifier": self.classifier,
            "low_confidence": float(self._low.value),
        }

    def _show(self, res, layer) -> None:
        if layer not in self._viewer.layers:
            self._say("the image layer was removed during the analysis; nothing shown")
            return
        self.result = res
        self._progress.value = self._progress.max
        L.show_result(self._viewer, res, layer, labels_layer=self._labels.value)
        if res.pixel_size_source != "given" and res.pixel_size == res.pixel_size:
            with self._pixel.changed.blocked():
                self._pixel.value = res.pixel_size
        counts = ", ".join(f"{k} {v}" for k, v in res.counts().items() if v)
        msg = f"{res.n_cells} cells ({counts or 'none classified'}); {res.area_nm2:.1f} nm²"
        if res.warnings:
            msg += "\n⚠ " + "\n⚠ ".join(res.warnings)
        self._say(msg)

    def _model_note(self) -> str:
        """A line saying which shipped model is missing (empty when both are there)."""
        import importlib.util

        from ..runtime import default_weights

        missing = []
        for name, module, what in (("detector", "detection", "hexagon detector (CNN-1)"),
                                   ("classifier", "classification", "cell classifier (CNN-2)")):
            if getattr(self, name) is not None:
                continue
            if importlib.util.find_spec(f"napari_tmd_defects.{module}") is None:
                missing.append(f"the {what} is not part of this installation")
            elif not default_weights(name).exists():
                missing.append(f"the {what} weights are missing ({default_weights(name).name})")
        return ("model missing: " + "; ".join(missing) + "; Run will fail") if missing else ""

    def _stop_on_close(self, *_) -> None:
        """The dock was closed: stop the worker and drop its callbacks (no Qt left to update)."""
        self._cancel_flag.set()
        if self._worker is not None:
            for sig in (self._worker.returned, self._worker.errored, self._worker.finished):
                try:
                    sig.disconnect()
                except (TypeError, RuntimeError):
                    pass
        try:
            self._relay.progress.disconnect()
        except (TypeError, RuntimeError):
            pass

    def _on_progress(self, done: int, total: int) -> None:
        self._progress.max = max(1, total)
        self._progress.value = min(done, total)

    def _on_error(self, exc: BaseException) -> None:
        self._say(describe_error(exc))

    def _on_finished(self) -> None:
        self._worker = None
        self._run_btn.enabled, self._cancel_btn.enabled = True, False

    def _say(self, msg: str) -> None:
        self._status.value = msg
