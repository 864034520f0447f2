"""**TMD defects** dock: the five tools (Analysis · Tuning · Preview · Correction ·
Statistics) as tabs of one dock, which fits a 1366×768 screen next to napari's own
panels (each tab scrolls when the dock is shorter than its content)."""

from __future__ import annotations

import napari
from qtpy.QtWidgets import QTabWidget, QVBoxLayout, QWidget

from ._statistics import scroll_area


def _qt(widget) -> QWidget:
    """The Qt widget of a magicgui or Qt widget."""
    return getattr(widget, "native", widget)


class ToolsWidget(QWidget):
    """One dock, one tab per tool; the tools are at ``analysis``, ``tuning``,
    ``preview``, ``correction`` and ``statistics``."""

    TABS = ("Analysis", "Tuning", "Preview", "Correction", "Statistics")

    def __init__(self, viewer: napari.viewer.Viewer):
        super().__init__()
        from ._analysis import AnalysisWidget
        from ._correction import CorrectionWidget
        from ._preview import PreviewWidget
        from ._statistics import StatisticsWidget
        from ._tuning import TuningWidget

        self.analysis = AnalysisWidget(viewer)
        self.tuning = TuningWidget(viewer)
        self.preview = PreviewWidget(viewer)
        self.correction = CorrectionWidget(viewer)
        self.statistics = StatisticsWidget(viewer)
        self.tabs = QTabWidget()
        self.tabs.setDocumentMode(True)
        self.tabs.setUsesScrollButtons(True)
        tools = (self.analysis, self.tuning, self.preview, self.correction, self.statistics)
        for title, tool in zip(self.TABS, tools):
            qt = _qt(tool)
            if qt.minimumSizeHint().height() >= 200:  # a tool that does not scroll itself: top-aligned, scrolling
                holder = QWidget()
                lay = QVBoxLayout(holder)
                lay.setContentsMargins(0, 0, 0, 0)
                lay.addWidget(qt)
                lay.addStretch(1)
                qt = scroll_area(holder)
            self.tabs.addTab(qt, title)
        lay = QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.addWidget(self.tabs)

    def show_tab(self, title: str) -> None:
        """Bring the tab ``title`` (one of :attr:`TABS`) to the front."""
        self.tabs.setCurrentIndex(self.TABS.index(title))
