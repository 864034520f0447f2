"""The tools fit a laptop screen (1366×768): one tabbed dock, and docks that scroll
instead of growing the window."""

from .conftest import PLUGIN

#: Height left for a dock in a 1366×768 napari window (title and status bars, dock title).
LAPTOP_DOCK_HEIGHT = 700


def test_tabbed_dock_fits_a_laptop_screen(analysed, qtbot):
    viewer, analysis = analysed
    window = viewer.window._qt_window
    window.resize(1366, 768)
    dock, tools = viewer.window.add_plugin_dock_widget(PLUGIN, "All tools (tabs)")
    assert [tools.tabs.tabText(k) for k in range(tools.tabs.count())] == list(tools.TABS)
    for k in range(tools.tabs.count()):
        tools.tabs.setCurrentIndex(k)
        assert tools.minimumSizeHint().height() <= LAPTOP_DOCK_HEIGHT, tools.TABS[k]
        assert tools.sizeHint().height() <= LAPTOP_DOCK_HEIGHT, tools.TABS[k]
    qtbot.wait(50)
    assert window.height() <= 768  # nothing forced the window to grow
    # the tools in the tabs work like the docks: the statistics show the current result
    assert f"{analysis.result.n_cells}</b> cells" in tools.statistics._summary.text()


def test_each_dock_scrolls_instead_of_growing_the_window(analysed, qtbot):
    viewer, analysis = analysed
    window = viewer.window._qt_window
    window.resize(1366, 768)
    docks = {"Defect analysis": analysis}
    for name in ("α/β tuning", "Noise preview", "Statistics"):
        docks[name] = viewer.window.add_plugin_dock_widget(PLUGIN, name)[1]
    total = 0
    for name, w in docks.items():
        qt = getattr(w, "native", w)
        assert qt.minimumSizeHint().height() <= 150, name  # a scroll area, not the whole form
        total += qt.minimumSizeHint().height()
    assert total <= LAPTOP_DOCK_HEIGHT
    qtbot.wait(50)
    assert window.height() <= 768


def test_statistics_table_shows_every_class_and_warnings_fold(analysed):
    viewer, analysis = analysed
    _, stats = viewer.window.add_plugin_dock_widget(PLUGIN, "Statistics")
    t = stats._table
    rows = sum(t.rowHeight(k) for k in range(t.rowCount()))
    assert t.rowCount() == 6 and t.height() >= t.horizontalHeader().sizeHint().height() + rows
    box = analysis._warnings
    analysis._warnings.set_warnings(["a long warning " * 40, "another"])
    assert box.isVisibleTo(analysis.native) and not box.expanded
    assert box.toggle.text() == "⚠ 2 warnings" and not box._area.isVisibleTo(analysis.native)
    box.toggle.click()
    assert box.expanded and box._area.isVisibleTo(analysis.native) and "another" in box.text.text()
    assert box._area.maximumHeight() <= 200
