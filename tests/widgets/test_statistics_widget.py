"""Statistics panel: counts, concentrations and the Export button."""

import json

import numpy as np
import pytest

from .conftest import PLUGIN


def test_statistics_and_export(analysed, tmp_path):
    viewer, analysis = analysed
    _, stats = viewer.window.add_plugin_dock_widget(PLUGIN, "Statistics")
    res = analysis.result
    conc = res.concentrations_cm2()
    for row, (name, n) in enumerate(res.counts().items()):
        assert stats._table.item(row, 1).text() == name
        count, sigma = stats._table.item(row, 2).text().split(" ± ")
        assert int(count) == n and float(sigma) >= np.sqrt(n) - 0.05  # counting statistics at least
        assert float(stats._table.item(row, 3).text()) == pytest.approx(conc[name], rel=1e-2)
    assert f"{res.n_cells}</b> cells" in stats._summary.text()
    assert "noise:" in stats._summary.text()
    assert "metal sites:" in stats._summary.text() and "chalcogen columns:" in stats._summary.text()
    ax = stats._fig.axes[0]
    assert sum(p.get_height() for p in ax.patches) == pytest.approx(np.sum(res.labels >= 0))
    assert stats._table.isColumnHidden(4) and "could not be read" not in stats._summary.text()

    # cells whose chalcogen column was left unread: their chalcogen vacancies are not in the
    # counts, the dock says so and shows the counts with those cells as CNN-2 calls them
    unread = np.flatnonzero(res.labels >= 0)[:5]
    res.x_unresolved[unread] = True
    res.site_states.atoms[res.sites.cells.x[unread]] = -1  # columns the reading left open
    res.labels[unread] = 0  # read as perfect, while the classifier calls them V_Te1
    res.probabilities[unread] = np.eye(res.probabilities.shape[1])[1]
    stats.refresh()
    assert not stats._table.isColumnHidden(4)
    assert "5 cells' chalcogen columns could not be read" in stats._summary.text()
    upper = res.counts_unread_as_classified()
    assert upper[res.class_names[1]] == res.counts()[res.class_names[1]] + 5
    for row, name in enumerate(res.class_names):
        assert int(stats._table.item(row, 4).text()) == upper[name]
    res.x_unresolved[:] = False
    stats.refresh()
    assert stats._table.isColumnHidden(4)

    stats.export_folder = tmp_path / "out"
    stats._export_btn.click()
    files = sorted(p.name for p in (tmp_path / "out").iterdir())
    stem = "MoTe2_sample_simulated"
    # the simulated sample has no file: its pixels are kept beside the result
    assert files == sorted(f"{stem}{e}" for e in (".tmd.json", "_cells.csv", "_image.tif", "_overlay.png",
                                                   "_result.npz", "_summary.json"))
    summary = json.loads((tmp_path / "out" / f"{stem}_summary.json").read_text())
    assert summary["counts"] == res.counts() and summary["n_cells"] == res.n_cells
    from napari_tmd_defects.results_io import load_result

    back = load_result(tmp_path / "out" / f"{stem}.tmd.json")  # the export reopens whole
    assert back.result.n_cells == res.n_cells and back.image is not None


def test_statistics_without_analysis(make_napari_viewer):
    viewer = make_napari_viewer()
    _, stats = viewer.window.add_plugin_dock_widget(PLUGIN, "Statistics")
    assert "No analysis yet" in stats._summary.text()
    assert stats.export() is None
