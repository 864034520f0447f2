import math

import pytest

from napari_tmd_defects.materials import MATERIALS, N_CLASSES, class_index, get_material


def test_mote2_names_are_the_papers():
    assert get_material("MoTe2").class_names == (
        "Perfect", "V_Te1", "V_Te2", "V_Mo", "V_Te1+V_Mo", "V_Te2+V_Mo",
    )


def test_names_follow_the_material():
    assert get_material("ws2").class_names[1:4] == ("V_S1", "V_S2", "V_W")
    assert get_material("MoSe2").class_names[5] == "V_Se2+V_Mo"


@pytest.mark.parametrize("name", list(MATERIALS))
def test_constants_are_physical(name):
    m = MATERIALS[name]
    assert 3.0 < m.a < 3.6
    assert m.bond_length == pytest.approx(m.a / math.sqrt(3))
    assert m.cell_area_nm2 == pytest.approx(math.sqrt(3) / 2 * (m.a / 10) ** 2)
    assert len(m.class_names) == N_CLASSES


def test_class_index_accepts_names_keys_and_ids():
    assert class_index("V_Te1") == 1
    assert class_index("vx2_vm") == 5
    assert class_index("3") == 3
    assert class_index("V_W", "WS2") == 3
    with pytest.raises(ValueError, match="expected one of"):
        class_index("V_S1", "MoTe2")


def test_unknown_material_lists_known_ones():
    with pytest.raises(ValueError, match="MoTe2"):
        get_material("graphene")
