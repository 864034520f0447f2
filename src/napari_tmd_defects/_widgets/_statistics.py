"""**Statistics** panel: counts (± one sigma: counting statistics and the classification's
doubt), analysed area, concentrations (cm⁻²), the site states and a confidence histogram
of the current result, updated live; **Export** writes the cell table (CSV),
an overlay PNG and a summary JSON.

Also the small Qt pieces the docks share: the class legend, a scroll area (every dock
fits a 1366×768 screen) and the pixel-size text.
"""

from __future__ import annotations

import re
from pathlib import Path

import napari
import numpy as np
from qtpy.QtCore import Qt
from qtpy.QtGui import QColor
from qtpy.QtWidgets import (
    QAbstractScrollArea,
    QFileDialog,
    QGridLayout,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QLineEdit,
    QPushButton,
    QScrollArea,
    QSizePolicy,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from ..analysis import pixel_size_text
from ..materials import CLASS_COLORS
from . import _layers as L


#: Rows the class table shows before it scrolls.
TABLE_ROWS = 8


def _qcolor(rgb) -> QColor:
    return QColor(*(int(255 * c) for c in rgb[:3]))


def scroll_area(inner: QWidget) -> QScrollArea:
    """``inner`` in a frameless vertical scroll area: the dock can be shorter than its
    content (a laptop screen) and scrolls instead of growing the window."""
    from qtpy.QtWidgets import QComboBox

    # drop-downs keep a modest width whatever they list (a long layer name would widen the
    # content past the dock, and the horizontal scroll bar is off)
    for box in inner.findChildren(QComboBox):
        box.setSizeAdjustPolicy(QComboBox.AdjustToMinimumContentsLengthWithIcon)
        box.setMinimumContentsLength(8)
    area = QScrollArea()
    area.setWidget(inner)
    area.setWidgetResizable(True)
    area.setFrameShape(QScrollArea.NoFrame)
    area.setHorizontalScrollBarPolicy(Qt.ScrollBarAlwaysOff)
    area.setMinimumWidth(inner.minimumSizeHint().width() + 16)
    return area


class ClassLegend(QWidget):
    """Colour swatches with the class names of a material (the paper's colours), in
    rows of two (a dock on a 1366-px-wide screen)."""

    COLUMNS = 2

    def __init__(self, class_names, parent=None):
        super().__init__(parent)
        lay = QGridLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.setHorizontalSpacing(6)
        lay.setVerticalSpacing(2)
        self._labels = []
        for k, name in enumerate(class_names):
            sw = QLabel()
            sw.setFixedSize(12, 12)
            r, g, b = (int(255 * c) for c in CLASS_COLORS[k])
            sw.setStyleSheet(f"background-color: rgb({r},{g},{b}); border: 1px solid black;")
            lab = QLabel(name)
            row, col = divmod(k, self.COLUMNS)
            lay.addWidget(sw, row, 2 * col)
            lay.addWidget(lab, row, 2 * col + 1)
            self._labels.append(lab)
        lay.setColumnStretch(2 * self.COLUMNS, 1)

    def set_names(self, class_names) -> None:
        for lab, name in zip(self._labels, class_names):
            lab.setText(name)


def _site_state_text(res) -> str:
    """One line per sublattice: the site states read from the columns, and the detection
    limit of a metal vacancy in this frame."""
    counts = res.site_state_counts()
    if not counts:
        return ""
    parts = []
    for role, name in (("M", "metal sites"), ("X", "chalcogen columns")):
        c = counts.get(role, {})
        if c:
            parts.append(f"{name}: " + ", ".join(f"{k} {v}" for k, v in c.items()))
    lim = (res.site_states.detection_limits.get("M", {}) if res.site_states is not None else {}).get("vacant")
    if isinstance(lim, dict) and lim.get("min_detectable_cm2"):
        parts.append(f"metal vacancies detectable from {lim['min_detectable_cm2']:.2g} cm⁻² "
                     f"({100 * lim['min_detectable_fraction']:.2g} % of the sites)")
    elif lim == "undetectable":
        parts.append("metal vacancies: not detectable in this frame")
    return "<br>" + "<br>".join(parts)


class StatisticsWidget(QWidget):
    """Live statistics of the current analysis and the Export button."""

    def __init__(self, viewer: napari.viewer.Viewer):
        super().__init__()
        self._viewer = viewer
        outer = QVBoxLayout(self)
        outer.setContentsMargins(0, 0, 0, 0)
        body = QWidget()
        lay = QVBoxLayout(body)
        outer.addWidget(scroll_area(body))
        self._summary = QLabel("No analysis yet: run Defect analysis first.")
        self._summary.setWordWrap(True)
        self._summary.setTextInteractionFlags(Qt.TextSelectableByMouse)
        lay.addWidget(self._summary)

        self._table = QTableWidget(0, 5)
        self._table.setHorizontalHeaderLabels(["", "class", "count", "cm⁻²", "unread"])
        self._table.horizontalHeaderItem(2).setToolTip(
            "cells of the class ± one sigma (counting statistics and the classification's own doubt)")
        self._table.horizontalHeaderItem(4).setToolTip(
            "the count with every cell whose chalcogen column could not be read (unresolved) as CNN-2 calls it: "
            "the counts of the classes with a chalcogen vacancy are lower bounds, this is the other end "
            "(shown only where columns were left unread)")
        self._table.verticalHeader().setVisible(False)
        self._table.setEditTriggers(QTableWidget.NoEditTriggers)
        hdr = self._table.horizontalHeader()
        hdr.setSectionResizeMode(QHeaderView.ResizeToContents)
        hdr.setStretchLastSection(True)
        self._table.setVerticalScrollBarPolicy(Qt.ScrollBarAsNeeded)
        self._table.setHorizontalScrollBarPolicy(Qt.ScrollBarAlwaysOff)
        self._table.setSizeAdjustPolicy(QAbstractScrollArea.AdjustIgnored)
        self._table.setSizePolicy(QSizePolicy.Expanding, QSizePolicy.Fixed)
        lay.addWidget(self._table)

        from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
        from matplotlib.figure import Figure
        from napari.utils.theme import get_theme

        theme = get_theme(viewer.theme)
        self._bg, self._fg = theme.background.as_hex(), theme.text.as_hex()
        self._fig = Figure(figsize=(3.2, 1.65), dpi=100, facecolor=self._bg)
        self._canvas = FigureCanvasQTAgg(self._fig)
        self._canvas.setFixedHeight(165)
        lay.addWidget(self._canvas)

        row = QHBoxLayout()
        self._out = QLineEdit(str(Path.home() / "tmd-defects-results"))
        self._out.setToolTip("folder the Export button writes to")
        browse = QPushButton("…")
        browse.setFixedWidth(28)
        browse.clicked.connect(self._browse)
        self._export_btn = QPushButton("Export")
        self._export_btn.setToolTip("write <image>_cells.csv, <image>_overlay.png and <image>_summary.json")
        self._export_btn.clicked.connect(lambda: self.export())
        row.addWidget(self._out)
        row.addWidget(browse)
        row.addWidget(self._export_btn)
        lay.addLayout(row)
        self._status = QLabel("")
        self._status.setWordWrap(True)
        lay.addWidget(self._status)
        lay.addStretch(1)

        L.connect_events(self, self.refresh, viewer.layers.selection.events.active, viewer.layers.events.removed,
                         selection=False)
        self.refresh()

    # ------------------------------------------------------------------ scripting API
    @property
    def export_folder(self) -> Path:
        """Folder the Export button writes to."""
        return Path(self._out.text()).expanduser()

    @export_folder.setter
    def export_folder(self, path: str | Path) -> None:
        self._out.setText(str(path))

    def refresh(self, *_) -> None:
        """Re-read the current result and redraw."""
        res = L.current_result(self._viewer)
        self._table.setRowCount(0)
        self._fig.clear()
        if res is None:
            self._summary.setText("No analysis yet: run Defect analysis first.")
            self._fit_table()
            self._canvas.draw_idle()
            return
        counts, conc, unc = res.counts(), res.concentrations_cm2(), res.counts_uncertainty()
        n_uncl = int(np.sum(res.labels < 0))
        n_unread = int(np.sum(res.unread_cells()))
        unread = res.counts_unread_as_classified() if n_unread else None
        self._table.setColumnHidden(4, unread is None)
        self._summary.setText(
            f"<b>{res.n_cells}</b> cells, area <b>{res.area_nm2:.2f} nm²</b> "
            f"({res.area_nm2 * 1e-14:.3g} cm²) · {res.material} · "
            f"{pixel_size_text(res.pixel_size, res.pixel_size_source)} · α = {res.alpha:.2f}, β = {res.beta:.2f}<br>"
            f"{int(res.flagged.sum())} low-confidence, {int(res.corrected.sum())} corrected"
            + (f", {n_uncl} unclassified" if n_uncl else "")
            + (f" · vacuum {100 * res.vacuum_fraction:.0f} % of the image, "
               f"{res.n_excluded_vacuum} cells there left out" if res.vacuum_mask is not None else "")
            + f"<br>{res.noise_text()}"
            + (f"<br>{n_unread} cells' chalcogen columns could not be read (unresolved): the counts of the "
               "classes with a chalcogen vacancy are lower bounds"
               + ("; <i>unread</i>: the counts with those cells as CNN-2 calls them" if unread is not None else "")
               if n_unread else "")
            + _site_state_text(res)
        )
        self._table.setRowCount(len(counts))
        for k, (name, n) in enumerate(counts.items()):
            sw = QTableWidgetItem("")
            sw.setBackground(_qcolor(CLASS_COLORS[k]))
            self._table.setItem(k, 0, sw)
            self._table.setItem(k, 1, QTableWidgetItem(name))
            cols = [(2, f"{n} ± {unc[name]:.1f}"), (3, f"{conc[name]:.3g}")]
            if unread is not None:
                cols.append((4, str(unread[name])))
            for col, text in cols:
                it = QTableWidgetItem(text)
                it.setTextAlignment(int(Qt.AlignRight | Qt.AlignVCenter))
                self._table.setItem(k, col, it)
        self._table.resizeRowsToContents()
        self._fit_table()
        self._draw_histogram(res)

    def export(self, folder: str | Path | None = None) -> dict[str, Path] | None:
        """Write ``<image>_cells.csv``, ``<image>_overlay.png``, ``<image>_summary.json`` and
        the project (``<image>.tmd.json`` with ``<image>_result.npz``, which the reader
        reopens with every layer) of the current result to ``folder`` (default: the folder
        field)."""
        res = L.current_result(self._viewer)
        if res is None:
            self._status.setText("nothing to export: run Defect analysis first")
            return None
        folder = Path(folder) if folder else self.export_folder
        layer = L.image_layer_of(self._viewer, res)
        image = None
        stem = "analysis"
        if layer is not None:
            from ..analysis import prepare_image

            image = prepare_image(L.image_data(layer))[0]
            stem = re.sub(r"[^A-Za-z0-9._-]+", "_", layer.name).strip("_") or stem
        try:
            from ..results_io import save_result
            from ..visualization import save_result_overlay

            folder.mkdir(parents=True, exist_ok=True)
            source = (layer.metadata.get("source") or getattr(layer.source, "path", None)) if layer is not None else None
            paths = save_result(res, folder / stem, image=image, image_source=source,
                                image_name=layer.name if layer is not None else "")
            if image is not None:
                paths["overlay"] = save_result_overlay(folder / f"{stem}_overlay.png", res, image, name=stem)
        except OSError as exc:
            self._status.setText(f"export failed: {exc}")
            return None
        self._status.setText("exported: " + ", ".join(p.name for p in paths.values()) + f" to {folder}")
        return paths

    # ------------------------------------------------------------------ internals
    def _fit_table(self) -> None:
        """Table height = its header and rows (up to :data:`TABLE_ROWS`; more scroll)."""
        t = self._table
        t.resizeRowsToContents()
        rows = sum(t.rowHeight(k) for k in range(min(t.rowCount(), TABLE_ROWS)))
        if t.rowCount() == 0:
            rows = t.verticalHeader().defaultSectionSize()
        t.setFixedHeight(t.horizontalHeader().sizeHint().height() + rows + 2 * t.frameWidth() + 2)

    def showEvent(self, event) -> None:  # noqa: N802 (Qt)
        """Rows get their final height once the style applies: fit the table again."""
        super().showEvent(event)
        self._fit_table()

    def _browse(self) -> None:
        d = QFileDialog.getExistingDirectory(self, "Export folder", self._out.text())
        if d:
            self._out.setText(d)

    def _draw_histogram(self, res) -> None:
        ax = self._fig.add_subplot(111)
        self._fig.subplots_adjust(left=0.14, right=0.97, top=0.94, bottom=0.3)  # for the ~165 px height
        ax.set_facecolor(self._bg)
        ok = res.labels >= 0
        bins = np.linspace(0, 1, 21)
        data = [res.confidence[ok & (res.labels == k)] for k in range(len(CLASS_COLORS))]
        if ok.any():
            ax.hist(data, bins=bins, stacked=True, color=[c for c in CLASS_COLORS], edgecolor=self._bg, linewidth=0.3)
        ax.axvline(res.low_confidence, color=self._fg, linestyle="--", linewidth=1)
        ax.set_xlim(0, 1)
        ax.set_xlabel("confidence", color=self._fg, fontsize=8)
        ax.set_ylabel("cells", color=self._fg, fontsize=8)
        ax.tick_params(colors=self._fg, labelsize=7)
        for s in ax.spines.values():
            s.set_color(self._fg)
        self._canvas.draw_idle()
