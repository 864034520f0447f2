"""**α/β tuning** dock widget: re-cast unit cells from the detected hexagons with new
crop ratios, live (no re-detection, no re-classification).

Cells keep their class by lattice index (:meth:`Result.recast`). The widget re-casts
from the result it first saw, into which it folds every later edit (corrections), so
cells that leave the image at one setting come back with their class at another.
"""

from __future__ import annotations

import napari
import numpy as np
from magicgui.widgets import Container, FloatSlider, PushButton

from . import _layers as L
from ._statistics import scroll_area

PAPER_ALPHA, PAPER_BETA = 0.65, 0.5


def _carry_state(dst, src) -> None:
    """Copy the per-cell classes and flags of ``src`` into ``dst`` for cells with the same
    lattice index (in place)."""
    pos = {tuple(k): n for n, k in enumerate(dst.ij)}
    pairs = np.array([(pos[tuple(k)], n) for n, k in enumerate(src.ij) if tuple(k) in pos], dtype=int).reshape(-1, 2)
    if not len(pairs):
        return
    d, s = pairs[:, 0], pairs[:, 1]
    dst.labels[d] = src.labels[s]
    dst.confidence[d] = src.confidence[s]
    dst.flagged[d] = src.flagged[s]
    dst.corrected[d] = src.corrected[s]
    if dst.probabilities is not None and src.probabilities is not None:
        dst.probabilities[d] = src.probabilities[s]
    dst.low_confidence = src.low_confidence


class TuningWidget(Container):
    """Sliders for α (W_cell / W_hexagon) and β (H_cell / H_hexagon)."""

    def __init__(self, viewer: napari.viewer.Viewer):
        super().__init__(labels=False)
        self._viewer = viewer
        self._base = None  # the result re-cast from (edits folded in)
        self._shown = None  # the last result this widget put on the layers
        tip = "upper-left cell = (x_min, y_min)–(x_min + αW, y_min + βH) of each hexagon box; lower-right mirrored"
        self._alpha = FloatSlider(label="α", value=PAPER_ALPHA, min=0.3, max=1.0, step=0.01, tooltip=tip)
        self._beta = FloatSlider(label="β", value=PAPER_BETA, min=0.3, max=1.0, step=0.01, tooltip=tip)
        self._reset = PushButton(text=f"paper values (α = {PAPER_ALPHA}, β = {PAPER_BETA})")
        self._status = L.text_label("")
        form = Container(widgets=[self._alpha, self._beta], labels=True)
        form.margins = (0, 0, 0, 0)
        body = Container(widgets=[form, self._reset, self._status], labels=False)
        body.native.layout().addStretch(1)
        self.margins = (0, 0, 0, 0)
        self.native.layout().addWidget(scroll_area(body.native))
        self._alpha.changed.connect(self._on_slider)
        self._beta.changed.connect(self._on_slider)
        self._reset.clicked.connect(lambda: self.set_alpha_beta(PAPER_ALPHA, PAPER_BETA))
        L.connect_events(self.native, self._sync, viewer.layers.selection.events.active, selection=False)
        self._sync()

    # ------------------------------------------------------------------ scripting API
    def set_alpha_beta(self, alpha: float, beta: float):
        """Re-cast the current result with ``alpha``, ``beta``; returns the new ``Result``
        (None when there is no result)."""
        with self._alpha.changed.blocked(), self._beta.changed.blocked():
            self._alpha.value, self._beta.value = alpha, beta
        return self._recast()

    # ------------------------------------------------------------------ internals
    def _on_slider(self, *_) -> None:
        self._recast()

    def _recast(self):
        res = L.current_result(self._viewer)
        if res is None:
            self._status.value = "no analysis yet: run Defect analysis first"
            return None
        image = L.image_layer_of(self._viewer, res)
        if image is None:
            self._status.value = "the analysed image layer is gone"
            return None
        if res is not self._shown or self._base is None:
            self._base = res
        else:
            _carry_state(self._base, res)
        a, b = float(self._alpha.value), float(self._beta.value)
        new = self._base.recast(a, b, image=np.asarray(image.data))
        _carry_state(new, self._base)
        self._shown = new
        layers = L.result_layers(self._viewer, res)
        L.show_result(self._viewer, new, image, labels_layer="labels" in layers)
        self._report(new)
        return new

    def _sync(self, *_) -> None:
        """Follow a new analysis: sliders to its α, β."""
        res = L.current_result(self._viewer)
        if res is None:
            self._status.value = "no analysis yet: run Defect analysis first"
            return
        if res is not self._shown:
            with self._alpha.changed.blocked(), self._beta.changed.blocked():
                self._alpha.value, self._beta.value = res.alpha, res.beta
        self._report(res)

    def _report(self, res) -> None:
        w = res.boxes[:, 2] - res.boxes[:, 0]
        h = res.boxes[:, 3] - res.boxes[:, 1]
        px = res.pixel_size
        size = (f"; median cell {np.median(w) * px:.2f} × {np.median(h) * px:.2f} Å"
                if res.n_cells and np.isfinite(px) and px > 0 else "")
        n_uncl = int(np.sum(res.labels < 0))
        self._status.value = (
            f"α = {res.alpha:.2f}, β = {res.beta:.2f}: {res.n_cells} cells from {len(res.hexagon_boxes)} hexagons"
            f"{size}" + (f"; {n_uncl} without a class" if n_uncl else "")
        )
