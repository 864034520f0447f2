"""**Defect analysis** dock widget: image layer, material, pixel size, device -> Run.

The analysis (:func:`napari_tmd_defects.pipeline.analyze`) runs in a napari thread
worker, with its stages, tiles and batches in the dock's bar and in napari's activity
dock, and a Cancel button that keeps the previous result. Results become layers (see
:mod:`._layers`) in the image's physical units (Å, or the nm the image already uses),
with the scale bar on. Errors (missing models or weights, bad input, an image without
cells) are shown as a short message and add no layers. ``detector`` / ``classifier``
attributes take model objects (default None: the shipped weights), so tests and scripts
can inject their own.

The pixel size: the file's (metadata), the one typed and the one the image's lattice
implies are shown side by side. When the one used disagrees with the lattice by more
than 10 % (:data:`~napari_tmd_defects.pipeline.PIXEL_SIZE_TOLERANCE`) the widget asks
which to use before running; a run whose pixel size, material or number of cells
differs from the result already shown asks before replacing it (replace, keep both,
discard). The questions go through :attr:`AnalysisWidget.ask`, which tests and scripts
replace to answer without a dialog.
"""

from __future__ import annotations

import math
import threading
from typing import Any, Callable

import napari
import numpy as np
from magicgui.widgets import CheckBox, ComboBox, Container, FloatSpinBox, LineEdit, ProgressBar, PushButton
from qtpy.QtCore import QObject, Qt, Signal
from qtpy.QtWidgets import QLabel, QSizePolicy, QToolButton, QVBoxLayout, QWidget

from ..analysis import pixel_size_text
from ..materials import MATERIALS, get_material
from . import _layers as L
from ._statistics import ClassLegend, scroll_area

_UNIT_TO_A = {"angstrom": 1.0, "ångström": 1.0, "nanometer": 10.0, "picometer": 0.01, "micrometer": 1e4}
#: The dock's speed choices: the analysis options each sets (the CLI's --classifier, --hexagons).
SPEEDS = {"thorough": {"classifier": None, "hexagons": "frame"}, "fast": {"classifier": "small", "hexagons": "sample"}}
#: Image-layer metadata: the pixel size (Å/px) typed for the layer, and the one its scale was set to here.
TYPED_KEY = "tmd_defects_typed_pixel_size_A"
SCALE_KEY = "tmd_defects_scale_pixel_size_A"
#: A new result replaces the one shown without asking only when its pixel size is within
#: this (relative) of the old one's, it has the same material and about as many cells.
REPLACE_PIXEL_TOLERANCE = 0.02
REPLACE_CELL_RATIO = (0.75, 1.33)
#: Stages of the analysis by percent done (:func:`~napari_tmd_defects.pipeline.analyze`).
STAGES = ((20, "lattice and sites"), (60, "hexagons (CNN-1)"), (100, "cell classes (CNN-2)"))

#: ``ask(title, text, options) -> key or None``: ``options`` maps answer keys to button texts.
Ask = Callable[[str, str, dict], Any]
_WARM = threading.Event()


class _Relay(QObject):
    """Carries progress and the pixel-size check from the worker thread (queued signals)."""

    progress = Signal(int, int)
    checked = Signal(object)


def pixel_size_of(layer) -> float | None:
    """Å/px of an image layer: ``metadata["pixel_size_A"]``, else its scale when its
    units are lengths; None when unknown."""
    px = layer.metadata.get("pixel_size_A")
    if px:
        return float(px)
    return _scale_pixel_size(layer)


def _scale_pixel_size(layer) -> float | None:
    try:
        unit = str(layer.units[-1])
    except (AttributeError, IndexError):
        return None
    if unit in _UNIT_TO_A and float(layer.scale[-1]) != 1.0:
        return float(layer.scale[-1]) * _UNIT_TO_A[unit]
    return None


def file_pixel_size(layer) -> float | None:
    """Å/px the image came with: its metadata, else a length scale it had before this
    widget set one; None when unknown."""
    px = layer.metadata.get("pixel_size_A")
    if px:
        return float(px)
    return None if SCALE_KEY in layer.metadata else _scale_pixel_size(layer)


def _is_series(layer) -> bool:
    """An image layer of a series of frames (3-D, not RGB)."""
    return layer is not None and layer.ndim == 3 and not getattr(layer, "rgb", False)


def _not_one_frame(layer) -> str:
    """Why a layer of several frames is not analysed, and what to do instead."""
    return (f"cannot analyse this image: {layer.name} is a series of {layer.data.shape[0]} frames, not one 2-D "
            "frame. Open a single frame, or align and average the series first (Run, then Average; tmd-defects "
            "analyze --stack sum; napari_tmd_defects.stacks.align_and_sum)")


def _file_notes(res, layer) -> None:
    """Put what the reader said of the layer's file (which of its images was read, a colour
    map read back: ``metadata["warnings"]``) first among the result's warnings."""
    notes = layer.metadata.get("warnings") or []
    res.warnings[:0] = [n for n in notes if n not in res.warnings]


def _valid(px) -> bool:
    return px is not None and math.isfinite(px) and px > 0


def layers_over(viewer, image_layer) -> list:
    """The plugin's layers drawn over ``image_layer`` (its result layers, also set-aside ones)."""
    prefix = f"{image_layer.name} ["
    return [lay for lay in viewer.layers if lay is not image_layer
            and (lay.metadata.get(L.IMAGE_KEY) == image_layer.name or lay.name.startswith(prefix))]


def show_in_physical_units(viewer, image_layer, pixel_size: float) -> bool:
    """Scale ``image_layer`` and the layers drawn over it to ``pixel_size`` Å/px, in the
    length unit the image already has (else Å), and turn the scale bar on, so that the
    status bar and measurements read in Å / nm. Result layers keep the image's scale and
    translate: their px coordinates stay on the image. Returns True when the scale changed."""
    if not _valid(pixel_size):
        return False
    unit = str(image_layer.units[-1])
    unit = unit if unit in _UNIT_TO_A else "angstrom"
    s = float(pixel_size) / _UNIT_TO_A[unit]
    changed = not np.allclose(image_layer.scale[-2:], (s, s), rtol=1e-9) or str(image_layer.units[-2]) != unit
    translate = tuple(image_layer.translate[-2:])
    for lay in (image_layer, *layers_over(viewer, image_layer)):
        scale, units = list(lay.scale), [str(u) for u in lay.units]
        scale[-2:], units[-2:] = (s, s), (unit, unit)
        lay.units = tuple(units)
        lay.scale = tuple(scale)
        if lay is not image_layer:
            tr = list(lay.translate)
            tr[-2:] = translate
            lay.translate = tuple(tr)
    image_layer.metadata[SCALE_KEY] = float(pixel_size)
    viewer.scale_bar.visible = True
    if changed:
        viewer.reset_view()
    return changed


def warm_up_layers() -> None:
    """Build small throw-away Shapes, Points and Labels layers once per session, in the
    worker thread: napari compiles its shape triangulation on first use (seconds), which
    would otherwise freeze the viewer while the first result layers are added."""
    if _WARM.is_set():
        return
    import pandas as pd
    from napari.layers import Labels, Points, Shapes

    sq = np.array([[0.0, 0.0], [0.0, 4.0], [4.0, 5.0], [4.0, 0.0]])
    Shapes([sq, sq + 1], shape_type="polygon", edge_width=[1.0, 2.0], edge_color=np.ones((2, 4)),
           face_color="transparent")
    Shapes([sq], shape_type="rectangle")
    Shapes([sq[:2]], shape_type="path")
    Points(np.zeros((2, 2)), features=pd.DataFrame({"class": pd.Categorical(["a", "b"])}), border_width=0.1,
           border_width_is_relative=True)
    Labels(np.zeros((8, 8), np.uint8))
    _WARM.set()


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


class WarningsBox(QWidget):
    """Warnings folded into one summary line; the arrow shows the full text (which
    scrolls), so long warnings never push the form aside."""

    MAX_HEIGHT = 180

    def __init__(self, parent=None):
        super().__init__(parent)
        lay = QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.setSpacing(2)
        self.toggle = QToolButton()
        self.toggle.setCheckable(True)
        self.toggle.setToolButtonStyle(Qt.ToolButtonTextBesideIcon)
        self.toggle.setArrowType(Qt.RightArrow)
        self.toggle.setAutoRaise(True)
        self.toggle.toggled.connect(self._on_toggle)
        self.text = QLabel()
        self.text.setWordWrap(True)
        self.text.setTextInteractionFlags(Qt.TextSelectableByMouse)
        self.text.setAlignment(Qt.AlignTop | Qt.AlignLeft)
        self.text.setSizePolicy(QSizePolicy.Ignored, QSizePolicy.Preferred)
        self._area = scroll_area(self.text)
        self._area.setMinimumWidth(0)
        self._area.setMaximumHeight(self.MAX_HEIGHT)
        self._area.setVisible(False)
        lay.addWidget(self.toggle)
        lay.addWidget(self._area)
        self.set_warnings([])

    @property
    def expanded(self) -> bool:
        return self.toggle.isChecked()

    def set_warnings(self, warnings: list[str]) -> None:
        """Show ``warnings`` (collapsed); hidden when there are none."""
        self._warnings = list(warnings)
        n = len(self._warnings)
        self.toggle.setText(f"⚠ {n} warning{'s' * (n != 1)}" if n else "")
        self.text.setText("\n\n".join(f"⚠ {w}" for w in self._warnings))
        self.toggle.setChecked(False)
        self.setVisible(bool(n))

    def _on_toggle(self, on: bool) -> None:
        self.toggle.setArrowType(Qt.DownArrow if on else Qt.RightArrow)
        self._area.setVisible(on)


class AnalysisWidget(Container):
    """Run the defect analysis on an image layer.

    Scripting: ``widget.run()`` analyses synchronously and returns the ``Result``;
    ``widget.start()`` / ``widget.cancel()`` drive the background worker;
    ``widget.set_pixel_size(0.09)`` types a pixel size; ``widget.ask`` answers the
    questions (see the module docstring).
    """

    def __init__(self, viewer: napari.viewer.Viewer, detector=None, classifier=None):
        super().__init__(labels=False)
        self._viewer = viewer
        #: Model objects (or weight paths) used instead of the shipped weights.
        self.detector = detector
        self.classifier = classifier
        #: The last Result this widget produced.
        self.result = None
        #: The question put to the user: ``ask(title, text, options) -> key or None``
        #: (a message box; replace it to answer from a script or a test).
        self.ask: Ask = self._ask_dialog
        self._worker = None
        self._prebuilt: dict | None = None  # Shapes layers built in the worker (L.prebuild_shapes)
        self._busy = False
        self._pbar = None
        self._stage = ""
        self._lattice: dict[tuple, float | None] = {}  # (layer id, material) -> Å/px the lattice implies
        self._trust: dict[tuple, bool] = {}  # (layer id, pixel size, material) -> the user's answer
        self._cancel_flag = threading.Event()
        self._relay = _Relay()
        self._relay.progress.connect(self._on_progress)
        self._relay.checked.connect(self._on_checked)

        self._image = ComboBox(label="image", choices=self._image_choices)
        self._material = ComboBox(label="material", choices=list(MATERIALS), value="MoTe2")
        self._composition = LineEdit(label="alloy / dopants", value="",
                                     tooltip="optional formula that replaces the material, e.g. Mo0.8W0.2Te2, "
                                             "WS2(1-x)Se2x, (Mo,W)(S,Se)2, MoS2:Re: metal sites are then read as "
                                             "host, substituent or vacancy, chalcogen columns by their atoms")
        self._pixel = FloatSpinBox(label="pixel size (Å/px)", value=0.0, min=0.0, max=100.0, step=0.001,
                                   tooltip="the file's value when it has one; type another to use it; "
                                           "0 = estimate from the lattice and the material's lattice constant")
        self._pixel.native.setDecimals(4)
        self._pixel.native.setSpecialValueText("estimate")
        self._pixel_info = L.text_label("")
        self._pixel_info.label = ""
        self._pixel_info.native.setToolTip("file: the image's metadata · typed: the value above, when it is "
                                           "not the file's · lattice: what the lattice in the image implies for "
                                           "the material (found at Run)")
        self._device = ComboBox(label="device", choices=["auto", "cpu", "cuda"], value="auto")
        self._speed = ComboBox(label="speed", choices=list(SPEEDS), value="thorough",
                               tooltip="thorough: hexagons (CNN-1) searched over the whole image, cells classified "
                                       "by the ResNet-18 (CNN-2). fast: hexagons searched on one tile per domain "
                                       "(enough to check the sites; cells elsewhere have support -1) and the "
                                       "distilled small CNN-2: about 2.5x faster on large frames")
        self._low = FloatSpinBox(label="low confidence", value=0.6, min=0.0, max=1.0, step=0.05,
                                 tooltip="cells below this confidence are flagged for review")
        self._labels = CheckBox(text="also a Labels layer", value=False)
        self._site_head = CheckBox(text="alloy metal sites: site-state head", value=True)
        self._site_head.native.setToolTip(
            "read the metal sites of an alloy or doped layer from the site-state head's column intensities "
            "(on) or from the column heights (off): the head is better for blurred, low-dose Mo-W alloys and "
            "heavy dopants (Re); binaries and layers with light (3d) metals such as V or Cr are read from the "
            "heights either way")
        self._run_btn = PushButton(text="Run")
        self._cancel_btn = PushButton(text="Cancel", enabled=False)
        self._progress = ProgressBar(value=0, min=0, max=100)
        self._status = L.text_label("")
        form = Container(widgets=[self._image, self._material, self._composition, self._pixel, self._pixel_info,
                                  self._device, self._speed, self._low], labels=True)
        buttons = Container(widgets=[self._run_btn, self._cancel_btn], layout="horizontal", labels=False)
        body = Container(widgets=[form, self._labels, self._site_head, buttons, self._progress, self._status],
                         labels=False)
        for c in (form, buttons):
            c.margins = (0, 0, 0, 0)
        self._warnings = WarningsBox()
        self._legend = ClassLegend(get_material("MoTe2").class_names)
        body.native.layout().addWidget(self._warnings)
        body.native.layout().addWidget(self._legend)
        body.native.layout().addStretch(1)
        self.margins = (0, 0, 0, 0)
        self.native.layout().addWidget(scroll_area(body.native))

        self._run_btn.clicked.connect(self.start)
        self._cancel_btn.clicked.connect(self.cancel)
        self._image.changed.connect(self._on_image)
        self._material.changed.connect(lambda m: self._legend.set_names(get_material(m).class_names))
        self._material.changed.connect(self._show_pixel_info)
        self._composition.changed.connect(self._show_pixel_info)
        self._pixel.native.editingFinished.connect(self._on_pixel_typed)
        L.connect_events(self.native, self._refresh_choices, viewer.layers.events.inserted,
                         viewer.layers.events.removed, viewer.layers.events.reordered, selection=False)
        self.native.destroyed.connect(self._stop_on_close)
        self._on_image(self._image.value)
        self._say(self._model_note())

    # ------------------------------------------------------------------ scripting API
    @property
    def running(self) -> bool:
        return self._busy

    @property
    def status(self) -> str:
        """The message line of the widget."""
        return self._status.value

    @property
    def warnings(self) -> list[str]:
        """The warnings of the last run (folded under the message line)."""
        return list(self._warnings._warnings)

    @property
    def pixel_info(self) -> str:
        """The pixel sizes side by side: the file's, the typed one, the lattice's."""
        return self._pixel_info.value

    def set_image(self, layer) -> None:
        """Choose the image layer (object or name) to analyse (fills pixel size and material)."""
        self._image.value = self._viewer.layers[layer] if isinstance(layer, str) else layer

    def set_pixel_size(self, pixel_size: float | None) -> None:
        """Type a pixel size (Å/px; None or 0: estimate from the lattice), as in the field."""
        self._pixel.value = float(pixel_size or 0.0)
        self._on_pixel_typed()

    def run(self, **overrides: Any):
        """Analyse synchronously (scripts); shows the layers and returns the ``Result``
        (None when the user declined a question).

        ``overrides`` are passed on to :func:`~napari_tmd_defects.pipeline.analyze`
        (e.g. ``alpha=0.7``). Raises what ``analyze`` raises.
        """
        from ..pipeline import analyze, check_pixel_size

        series = self._image.value
        if _is_series(series):
            if not self._ask_average(series):
                return None
            from ..stacks import align_and_sum

            self._image.value = self._add_average(series, *align_and_sum(np.asarray(series.data)))
        layer, kwargs = self._params()
        kwargs.update(overrides)
        data = L.image_data(layer)
        if kwargs["pixel_size"] is not None and "trust_pixel_size" not in overrides:
            key = self._trust_key(layer, kwargs)
            if key not in self._trust:
                chk = check_pixel_size(data, kwargs["material"], kwargs["pixel_size"], kwargs["pixel_size_source"])
                self._on_checked((layer, chk))
                if chk.disagrees and not self._decide(chk, layer, kwargs):
                    return None
            kwargs["trust_pixel_size"] = self._trust.get(key, False)
        res = analyze(data, **kwargs)
        _file_notes(res, layer)
        self._show(res, layer)
        return res

    def start(self) -> None:
        """Start the analysis in a thread worker (the Run button); a series of frames is
        first aligned and averaged into a new layer, if the user agrees."""
        if self._busy:
            return
        if _is_series(self._image.value):
            if self._ask_average(self._image.value):
                self._average_then_start(self._image.value)
            return
        try:
            layer, kwargs = self._params()
        except ValueError as exc:
            self._say(str(exc))
            return
        self._cancel_flag.clear()
        self._set_busy(True, layer)
        self._say(f"analysing {layer.name} …")
        self._launch(layer, kwargs)

    # ------------------------------------------------------------------ a series of frames
    def _ask_average(self, layer) -> bool:
        """Ask whether to average a series' aligned frames; say what else to do if not."""
        n = layer.data.shape[0]
        answer = self.ask(
            "A series of frames",
            f"{layer.name} holds {n} frames; the analysis reads one. Align them (rigid, sub-pixel) and analyse "
            "their average, added as a new layer?",
            {"average": "Average and analyse"})
        if answer != "average":
            self._say(_not_one_frame(layer))
        return answer == "average"

    def _add_average(self, series, image: np.ndarray, shifts: np.ndarray):
        """A new 2-D image layer of a series' aligned average (on the first frame's pixels,
        its own pixel size and units), with a note of the alignment in its warnings."""
        from ..stacks import common_region, series_note

        y0, _, x0, _ = common_region(shifts, series.data.shape[-2:])
        meta = {k: v for k, v in series.metadata.items() if k not in ("rgb", "n_frames", L.RESULT_KEY)}
        meta["warnings"] = list(meta.get("warnings") or []) + [f"{series.name}: {series_note(shifts, image)}"]
        scale, units = tuple(series.scale[-2:]), tuple(str(u) for u in series.units[-2:])
        translate = tuple(float(t + o * s) for t, o, s in zip(series.translate[-2:], (y0, x0), scale))
        return self._viewer.add_image(image, name=f"{series.name} [aligned mean]", metadata=meta, scale=scale,
                                      units=units, translate=translate, colormap="gray")

    def _average_then_start(self, series) -> None:
        """Align and average a series in a worker, add the average as a layer, analyse it."""
        from napari.qt.threading import create_worker

        from ..stacks import align_and_sum

        data = np.asarray(series.data)
        self._cancel_flag.clear()
        self._set_busy(True, series)
        self._say(f"aligning the {len(data)} frames of {series.name} …")

        def done(out) -> None:
            self._set_busy(False)
            if self._cancel_flag.is_set():
                self._say("cancelled; previous results were kept")
                return
            self._image.value = self._add_average(series, *out)
            self.start()

        worker = create_worker(align_and_sum, data, _start_thread=False, _connect={"errored": self._on_error})
        worker.returned.connect(done)
        worker.errored.connect(lambda _exc: self._set_busy(False))
        self._worker = worker
        worker.start()

    def cancel(self) -> None:
        """Ask the running analysis to stop (the Cancel button)."""
        if self._busy:
            self._cancel_flag.set()
            self._say("cancelling …")

    # ------------------------------------------------------------------ the worker
    def _launch(self, layer, kwargs: dict[str, Any]) -> None:
        """Run (pixel-size check, then) the analysis in a worker; a disagreement returns
        the check and the question is asked here (the main thread)."""
        from napari.qt.threading import create_worker

        from ..pipeline import analyze, check_pixel_size

        data = L.image_data(layer)
        relay, cancel = self._relay, self._cancel_flag.is_set
        key = self._trust_key(layer, kwargs)
        decided = kwargs["pixel_size"] is None or key in self._trust
        kw = dict(kwargs, trust_pixel_size=self._trust.get(key, False))

        def job():
            if not decided:
                chk = check_pixel_size(data, kw["material"], kw["pixel_size"], kw["pixel_size_source"])
                relay.checked.emit((layer, chk))
                if chk.disagrees:
                    return chk
            res = analyze(data, progress=relay.progress.emit, cancel=cancel, **kw)
            _file_notes(res, layer)
            if res.n_cells:
                warm_up_layers()
                self._prebuilt = L.prebuild_shapes(res)  # the slow part of the layers, off the main thread
            return res

        worker = create_worker(job, _start_thread=False, _connect={"errored": self._on_error})
        worker.returned.connect(lambda out: self._on_returned(out, layer, kwargs))
        worker.finished.connect(lambda: self._on_finished(worker))
        self._worker = worker
        worker.start()

    def _on_returned(self, out, layer, kwargs) -> None:
        from ..pipeline import PixelSizeCheck

        if not isinstance(out, PixelSizeCheck):
            ok = self._show(out, layer)
            self._end_progress(ok)
            return
        self._worker = None  # this worker is done; its `finished` no longer ends the run
        if self._cancel_flag.is_set():
            self._say("cancelled; previous results were kept")
            self._set_busy(False)
            return
        if not self._decide(out, layer, kwargs):
            self._set_busy(False)
            return
        self._launch(layer, kwargs)

    def _on_finished(self, worker) -> None:
        if self._worker is worker:
            self._worker = None
            self._set_busy(False)

    def _on_error(self, exc: BaseException) -> None:
        self._say(describe_error(exc))

    def _set_busy(self, busy: bool, layer=None) -> None:
        self._busy = busy
        self._run_btn.enabled, self._cancel_btn.enabled = not busy, busy
        if busy:
            from napari.utils import progress

            self._progress.value = 0
            self._stage = ""
            self._pbar = progress(total=100, desc=f"Defect analysis of {layer.name}")
        else:
            self._end_progress(False)

    def _end_progress(self, ok: bool) -> None:
        """Close the activity-dock bar; the dock's bar full after a shown result, else reset."""
        if self._pbar is not None:
            self._pbar.close()
            self._pbar = None
        if not ok and self._progress.value < 100:
            self._progress.value = 0

    def _on_progress(self, done: int, total: int) -> None:
        if not self._busy:
            return
        pct = int(min(100, 100 * done / max(total, 1)))
        self._progress.value = max(self._progress.value, pct)
        if self._pbar is not None:
            if pct > self._pbar.n:
                self._pbar.update(pct - self._pbar.n)
            stage = next((name for hi, name in STAGES if pct < hi), "layers")
            if stage != self._stage:
                self._stage = stage
                self._pbar.set_description(f"Defect analysis: {stage}")

    # ------------------------------------------------------------------ pixel size
    def _trust_key(self, layer, kwargs) -> tuple:
        px = kwargs.get("pixel_size")
        return id(layer), None if px is None else round(float(px), 6), kwargs["material"]

    def _decide(self, chk, layer, kwargs) -> bool:
        """Ask which pixel size to use (the check disagrees); False when the user declines."""
        what = "file's" if chk.source == "metadata" else "typed"
        answer = self.ask(
            "Pixel size disagrees with the lattice",
            f"For {layer.name}: {chk.describe()}.\n\nThe image's scale, the scale bar and lengths in Å follow "
            "the pixel size (the cells follow the image's own lattice). Which one should the analysis use?",
            {"lattice": f"Lattice: {chk.lattice:.4g} Å/px", "given": f"The {what}: {chk.given:.4g} Å/px"},
        )
        if answer not in ("lattice", "given"):
            self._say("not run: the pixel size was left undecided; previous results were kept")
            return False
        self._trust[self._trust_key(layer, kwargs)] = answer == "given"
        return True

    def _on_checked(self, payload) -> None:
        layer, chk = payload
        self._lattice[(id(layer), chk.material)] = chk.lattice
        self._show_pixel_info()

    def _on_pixel_typed(self, *_) -> None:
        """A pixel size was typed: remember it for the layer and scale the image to it."""
        layer = self._image.value
        if layer is None:
            return
        px = float(self._pixel.value) or None
        file_px = file_pixel_size(layer)
        if px is None or (file_px and abs(px / file_px - 1.0) < 1e-6):
            layer.metadata.pop(TYPED_KEY, None)
        else:
            layer.metadata[TYPED_KEY] = px
        if px is not None:
            show_in_physical_units(self._viewer, layer, px)
        self._trust = {k: v for k, v in self._trust.items() if k[0] != id(layer)}  # typing asks anew
        self._show_pixel_info()

    def _host(self) -> str | None:
        try:
            return get_material(self._material_text()).name
        except ValueError:
            return None

    def _show_pixel_info(self, *_) -> None:
        layer = self._image.value
        if layer is None:
            self._pixel_info.value = ""
            return
        file_px, typed = file_pixel_size(layer), float(self._pixel.value) or None
        if typed is not None and file_px and abs(typed / file_px - 1.0) < 1e-6:
            typed = None
        lat = self._lattice.get((id(layer), self._host()), "?")

        def fmt(v):
            return "—" if v is None else "at Run" if v == "?" else f"{v:.4g}"

        text = f"file {fmt(file_px)} · typed {fmt(typed)} · lattice {fmt(lat)} Å/px"
        res = self.result
        shown = None if res is None else L.image_layer_of(self._viewer, res)
        if shown is not None and shown.name == layer.name:
            text += f"\nused: {pixel_size_text(res.pixel_size, res.pixel_size_source)}"
        self._pixel_info.value = text

    # ------------------------------------------------------------------ results
    def _previous(self, layer):
        """The result shown over ``layer`` that a new run would replace (None if none)."""
        name = L.layer_name(layer.name, "centres")
        if name in self._viewer.layers:
            return L.unwrap(self._viewer.layers[name].metadata.get(L.RESULT_KEY))
        return None

    @staticmethod
    def _differs(old, new) -> bool:
        """The new result is not a plain re-run of the old one (pixel size, material, cells)."""
        if not (_valid(old.pixel_size) and _valid(new.pixel_size)):
            return True
        lo, hi = REPLACE_CELL_RATIO
        return (abs(new.pixel_size / old.pixel_size - 1.0) > REPLACE_PIXEL_TOLERANCE or new.material != old.material
                or not lo <= new.n_cells / max(old.n_cells, 1) <= hi
                or (np.any(old.labels >= 0) and not np.any(new.labels >= 0)))

    def _set_aside(self, layer) -> None:
        """Rename the layers over ``layer`` so that the next result gets its own."""
        names = {lay.name for lay in self._viewer.layers}
        k = 1
        while any(f"{n} (run {k})" in names for n in names):
            k += 1
        for lay in layers_over(self._viewer, layer):
            if " (run " not in lay.name:
                lay.name = f"{lay.name} (run {k})"

    def _show(self, res, layer) -> bool:
        """Put ``res`` on the layers over ``layer`` (asking before replacing a different
        good result); False when nothing was shown."""
        self._warnings.set_warnings(res.warnings)
        if layer not in self._viewer.layers:
            self._say("the image layer was removed during the analysis; nothing shown")
            return False
        if res.n_cells == 0:
            why = "; ".join(res.warnings[-2:]) or "the image shows no lattice"
            self._say(f"no unit cells found, so no layers were added: {why}")
            return False
        old = self._previous(layer)
        if old is not None and old is not res and old.n_cells and self._differs(old, res):
            answer = self.ask(
                "Replace the previous result?",
                f"{layer.name} already shows {old.n_cells} cells at {pixel_size_text(old.pixel_size, old.pixel_size_source)}."
                f"\nThe new run found {res.n_cells} cells at {pixel_size_text(res.pixel_size, res.pixel_size_source)}.",
                {"replace": "Replace", "keep": "Keep both (new layers)", "discard": "Discard the new result"},
            )
            if answer not in ("replace", "keep"):
                show_in_physical_units(self._viewer, layer, old.pixel_size)  # the scale of what is shown
                self._say("the new result was discarded; the previous one is kept")
                return False
            if answer == "keep":
                self._set_aside(layer)
        self.result = res
        self._progress.value = 100
        if self._pbar is not None:
            self._pbar.set_description("Defect analysis: layers")
        show_in_physical_units(self._viewer, layer, res.pixel_size)
        prebuilt, self._prebuilt = self._prebuilt, None
        L.show_result(self._viewer, res, layer, labels_layer=self._labels.value, prebuilt=prebuilt)
        show_in_physical_units(self._viewer, layer, res.pixel_size)  # the layers just added
        counts = ", ".join(f"{k} {v}" for k, v in res.counts().items() if v)
        self._say(f"{res.n_cells} cells ({counts or 'none classified'}); {res.area_nm2:.1f} nm² at "
                  f"{pixel_size_text(res.pixel_size, res.pixel_size_source)}")
        self._lattice[(id(layer), get_material(res.material).name)] = res.checks.get("pixel_size_lattice_A")
        self._show_pixel_info()
        return True

    # ------------------------------------------------------------------ internals
    def _image_choices(self, _w=None):
        return [(lay.name, lay) for lay in self._viewer.layers if isinstance(lay, napari.layers.Image)]

    def _refresh_choices(self, *_) -> None:
        self._image.reset_choices()  # emits `changed` (-> _on_image) when the choice changes

    def _on_image(self, layer) -> None:
        if layer is None:
            return
        px = layer.metadata.get(TYPED_KEY) or file_pixel_size(layer)
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
        self._show_pixel_info()

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
        if layer.ndim > 2 and not getattr(layer, "rgb", False):
            raise ValueError(_not_one_frame(layer))
        px = float(self._pixel.value) or None
        file_px = file_pixel_size(layer)
        source = "metadata" if px is not None and file_px and abs(px / file_px - 1.0) < 1e-6 else "given"
        return layer, {
            "pixel_size": px,
            "pixel_size_source": source,
            "material": self._material_text(),
            "device": self._device.value,
            "detector": self.detector,
            "classifier": self.classifier if self.classifier is not None else SPEEDS[self._speed.value]["classifier"],
            "hexagons": SPEEDS[self._speed.value]["hexagons"],
            "site_head": "default" if self._site_head.value else None,
            "low_confidence": float(self._low.value),
        }

    def _ask_dialog(self, title: str, text: str, options: dict[str, str]):
        """A modal message box with one button per option (and Cancel: None)."""
        from qtpy.QtWidgets import QMessageBox

        box = QMessageBox(self.native)
        box.setIcon(QMessageBox.Question)
        box.setWindowTitle(title)
        box.setText(text)
        buttons = {box.addButton(label, QMessageBox.AcceptRole): key for key, label in options.items()}
        box.addButton(QMessageBox.Cancel)
        box.exec_()
        return buttons.get(box.clickedButton())

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
        if self._pbar is not None:
            self._pbar.close()
            self._pbar = None
        for name in ("progress", "checked"):
            try:
                getattr(self._relay, name).disconnect()
            except (TypeError, RuntimeError):
                pass

    def _say(self, msg: str) -> None:
        self._status.value = msg

