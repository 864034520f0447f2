"""The data model: canonical cell, sites, cells."""

import numpy as np
import pytest

from napari_tmd_defects import geometry as geo
from napari_tmd_defects.sites import (
    CANONICAL_BOX,
    CANONICAL_PARTNER,
    CellSites,
    SiteModel,
    Sites,
    canonical_cell_box,
    cell_box_corners,
)


def test_canonical_cell_is_the_ground_truth_convention():
    a = 10.0
    box = geo.cell_box(np.zeros(2), geo.mx_offset(a), a) / a
    assert np.allclose(box, CANONICAL_BOX)
    assert np.allclose(CANONICAL_PARTNER * a, geo.mx_offset(a))
    # the paper's casting of the hexagon box gives that box at alpha = 0.65, beta = 0.5
    assert np.allclose(canonical_cell_box(0.65, 0.5), CANONICAL_BOX)
    wide = canonical_cell_box(0.8, 0.6)
    assert wide[0] == pytest.approx(CANONICAL_BOX[0]) and wide[2] > CANONICAL_BOX[2] and wide[3] > CANONICAL_BOX[3]
    with pytest.raises(ValueError, match="alpha"):
        canonical_cell_box(0.0, 0.5)
    assert cell_box_corners().shape == (4, 2)


def test_empty_and_subset():
    s = Sites.empty()
    assert len(s) == 0 and len(s.subset(np.zeros(0, bool))) == 0
    c = CellSites.empty()
    assert len(c) == 0 and c.frame.shape == (0, 2, 3)
    m = SiteModel.empty(30.0)
    assert m.a_px == 30.0 and not m.domains and m.boundary_length_px == 0.0
