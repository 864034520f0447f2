"""**Noise preview** dock widget: simulate a frame of one defect class with chosen noise
and blur next to the user's image, and compare a selected cell with a simulated cell
of its predicted class (crops side by side + intensity profile along M–X).

The science is in :mod:`napari_tmd_defects.comparison`; this module only draws.
"""

from __future__ import annotations

import napari
import numpy as np
from magicgui.widgets import CheckBox, ComboBox, Container, FloatSpinBox, PushButton, SpinBox

from ..materials import MATERIALS, get_material
from . import _layers as L
from . import _selection as S
from ._analysis import pixel_size_of
from ._statistics import scroll_area

PREVIEW_NAME = "noise preview (simulated)"


class PreviewWidget(Container):
    """Simulated image with the chosen class, noise and blur; cell-vs-simulation check."""

    def __init__(self, viewer: napari.viewer.Viewer):
        super().__init__(labels=False)
        self._viewer = viewer
        #: The last comparison (:class:`~napari_tmd_defects.comparison.CellComparison`).
        self.comparison = None
        self._material = ComboBox(label="material", choices=list(MATERIALS), value="MoTe2")
        self._class = ComboBox(label="defect class", choices=list(get_material("MoTe2").class_names), value="V_Te1")
        self._lam = FloatSpinBox(label="Poisson λ", value=12.0, min=0.0, max=10000.0, step=1.0,
                                 tooltip="counts at the brightest column's peak; 0 = no shot noise")
        self._mu = FloatSpinBox(label="Gaussian μ", value=15.0, min=0.0, max=255.0, step=1.0,
                                tooltip="std of additive noise, grey levels (peak = 255)")
        self._blur = FloatSpinBox(label="blur FWHM (Å)", value=0.6, min=0.0, max=5.0, step=0.1,
                                  tooltip="effective source size / vibration blur")
        self._pixel = FloatSpinBox(label="pixel size (Å/px)", value=0.09, min=0.005, max=1.0, step=0.005)
        self._pixel.native.setDecimals(4)
        self._size = SpinBox(label="size (px)", value=256, min=64, max=2048, step=32)
        self._seed = SpinBox(label="seed", value=0, min=0, max=2**31 - 1)
        self._live = CheckBox(text="update live", value=True)
        self._sim_btn = PushButton(text="Simulate")
        self._cmp_btn = PushButton(text="Compare selected cell with its class")
        self._status = L.text_label("")
        form = Container(widgets=[self._material, self._class, self._lam, self._mu, self._blur, self._pixel,
                                  self._size, self._seed], labels=True)
        form.margins = (0, 0, 0, 0)
        body = Container(widgets=[form, self._live, self._sim_btn, self._cmp_btn, self._status], labels=False)

        from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
        from matplotlib.figure import Figure
        from napari.utils.theme import get_theme

        theme = get_theme(viewer.theme)
        self._bg, self._fg = theme.background.as_hex(), theme.text.as_hex()
        self._fig = Figure(figsize=(3.6, 3.8), dpi=100, facecolor=self._bg, layout="constrained")
        self._canvas = FigureCanvasQTAgg(self._fig)
        self._canvas.setMinimumHeight(380)
        self._canvas.setVisible(False)
        body.native.layout().addWidget(self._canvas)
        body.native.layout().addStretch(1)
        self.margins = (0, 0, 0, 0)
        self.native.layout().addWidget(scroll_area(body.native))

        self._material.changed.connect(self._on_material)
        for w in (self._class, self._lam, self._mu, self._blur, self._pixel, self._size, self._seed):
            w.changed.connect(self._on_param)
        self._sim_btn.clicked.connect(lambda: self.simulate())
        self._cmp_btn.clicked.connect(lambda: self.compare_selected())
        self._prefill()

    # ------------------------------------------------------------------ scripting API
    def noise(self):
        """The :class:`~napari_tmd_defects.simulation.Noise` of the current settings."""
        from ..simulation import Noise

        lam = float(self._lam.value)
        return Noise(poisson_lambda=lam if lam > 0 else None, gaussian_mu=float(self._mu.value), background=0.08)

    def optics(self):
        """The :class:`~napari_tmd_defects.simulation.Optics` of the current settings."""
        from ..simulation import Optics

        return Optics(source_fwhm_a=float(self._blur.value))

    def simulate(self):
        """Simulate the preview and show it right of the analysed image; returns the layer."""
        from ..comparison import preview_image

        mat = self._material.value
        label = list(get_material(mat).class_names).index(self._class.value)
        px = float(self._pixel.value)
        sim = preview_image(mat, label, px, self.noise(), self.optics(), shape=int(self._size.value),
                            seed=int(self._seed.value))
        scale, translate, units = self._placement(px)
        meta = {"pixel_size_A": px, "material": mat, "ground_truth": sim.truth.to_dict(), "simulated": True}
        if PREVIEW_NAME in self._viewer.layers:
            lay = self._viewer.layers[PREVIEW_NAME]
            lay.data = sim.image
            lay.scale, lay.translate, lay.units = scale, translate, units
            lay.metadata.update(meta)
            lay.reset_contrast_limits()
        else:
            lay = self._viewer.add_image(sim.image, name=PREVIEW_NAME, colormap="gray", scale=scale,
                                         translate=translate, units=units, metadata=meta)
        self._status.value = (f"simulated {self._class.value} at {px:g} Å/px, λ = {self._lam.value:g}, "
                              f"μ = {self._mu.value:g}, blur {self._blur.value:g} Å")
        return L.unwrap(lay)

    def compare_selected(self):
        """Compare the selected cell with a simulated cell of its predicted class (noise
        and blur of this widget, pixel size of the analysis); draws and returns the
        :class:`~napari_tmd_defects.comparison.CellComparison`."""
        from ..analysis import prepare_image
        from ..comparison import compare_cell

        res = L.current_result(self._viewer)
        if res is None:
            self._status.value = "no analysis yet: run Defect analysis first"
            return None
        sel = S.selected_cells(self._viewer, res)
        if not len(sel):
            self._status.value = "select a cell first (click it)"
            return None
        layer = L.image_layer_of(self._viewer, res)
        if layer is None:
            self._status.value = "the analysed image layer is gone"
            return None
        k = int(sel[0])
        label = int(res.labels[k])
        if label < 0:
            label = list(res.class_names).index(self._class.value)
        img = prepare_image(L.image_data(layer))[0]
        cmp = compare_cell(img, res.boxes[k], res.x_sites[k], res.m_sites[k], res.pixel_size, label,
                           material=res.material, noise=self.noise(), optics=self.optics(), seed=int(self._seed.value))
        self.comparison = cmp
        self._draw(cmp, k, res)
        self._status.value = f"cell {k} ({res.label_names()[k]}, confidence {res.confidence[k]:.2f}) vs simulated {cmp.class_name}"
        return cmp

    # ------------------------------------------------------------------ internals
    def _prefill(self) -> None:
        res = L.current_result(self._viewer)
        if res is not None:
            self._material.value = get_material(res.material).name
            if np.isfinite(res.pixel_size) and res.pixel_size > 0:
                self._pixel.value = float(res.pixel_size)
            return
        for lay in self._viewer.layers:
            if isinstance(lay, napari.layers.Image) and lay.name != PREVIEW_NAME:
                px = pixel_size_of(lay)
                if px and 0.005 <= px <= 1.0:
                    self._pixel.value = px
                if lay.metadata.get("material") in MATERIALS:
                    self._material.value = lay.metadata["material"]
                return

    def _on_material(self, mat: str) -> None:
        idx = list(self._class.choices).index(self._class.value)
        self._class.choices = list(get_material(mat).class_names)
        self._class.value = self._class.choices[idx]
        self._on_param()

    def _on_param(self, *_) -> None:
        if self._live.value and PREVIEW_NAME in self._viewer.layers:
            self.simulate()

    def _reference_image(self):
        res = L.current_result(self._viewer)
        if res is not None and L.image_layer_of(self._viewer, res) is not None:
            return L.image_layer_of(self._viewer, res)
        for lay in self._viewer.layers:
            if isinstance(lay, napari.layers.Image) and lay.name != PREVIEW_NAME:
                return lay
        return None

    def _placement(self, px: float):
        """Scale, translate and units that put the preview right of the reference image,
        at the same world units per Å."""
        ref = self._reference_image()
        if ref is None:
            return (px, px), (0.0, 0.0), ("angstrom", "angstrom")
        ref_px = pixel_size_of(ref)
        per_a = float(ref.scale[-1]) / ref_px if ref_px else 1.0 / px
        ext = np.asarray(ref.extent.world)[:, -2:]
        gap = 0.05 * (ext[1, 1] - ext[0, 1])
        units = tuple(str(u) for u in ref.units[-2:])
        return (px * per_a, px * per_a), (float(ext[0, 0]), float(ext[1, 1] + gap)), units

    def _draw(self, cmp, k: int, res) -> None:
        fig, fg = self._fig, self._fg
        fig.clear()
        gs = fig.add_gridspec(2, 2, height_ratios=[1, 1.1])
        for col, (img, title) in enumerate(((cmp.crop, f"cell {k}: {res.label_names()[k]}"),
                                            (cmp.reference_crop, f"simulated {cmp.class_name}"))):
            ax = fig.add_subplot(gs[0, col])
            ax.imshow(img, cmap="gray", vmin=np.percentile(img, 1), vmax=np.percentile(img, 99.5))
            ax.set_title(title, color=fg, fontsize=8)
            ax.set_xticks([])
            ax.set_yticks([])
        ax = fig.add_subplot(gs[1, :])
        ax.set_facecolor(self._bg)
        ax.plot(cmp.distance_A, cmp.profile, color="#ffb000", lw=1.5, label="image")
        ax.plot(cmp.reference_distance_A, cmp.reference_profile, color="#6ec6ff", lw=1.5, ls="--", label="simulation")
        for x, name in ((0.0, "M"), (cmp.mx_distance_A, "X")):
            ax.axvline(x, color=fg, lw=0.6, ls=":")
            ax.text(x, 1.02, name, color=fg, fontsize=8, ha="center", va="bottom", transform=ax.get_xaxis_transform())
        ax.set_xlabel("distance along M→X (Å)", color=fg, fontsize=8)
        ax.set_ylabel("intensity (norm.)", color=fg, fontsize=8)
        ax.tick_params(colors=fg, labelsize=7)
        for s in ax.spines.values():
            s.set_color(fg)
        ax.legend(fontsize=7, frameon=False, labelcolor=fg)
        self._canvas.setVisible(True)
        self._canvas.draw_idle()
