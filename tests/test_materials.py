import math

import pytest

from napari_tmd_defects.materials import MATERIALS, N_CLASSES, class_index, get_material, parse_composition


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


@pytest.mark.parametrize("formula, metals, chalcogens, dopants, host", [
    ("Mo0.8W0.2Te2", {"Mo": 0.8, "W": 0.2}, {"Te": 1.0}, {}, "MoTe2"),
    ("WS2(1-x)Se2x", {"W": 1.0}, {"S": None, "Se": None}, {}, "WS2"),
    ("Mo1-xWxSe2", {"Mo": None, "W": None}, {"Se": 1.0}, {}, "MoSe2"),
    ("(Mo,W)(S,Se)2", {"Mo": None, "W": None}, {"S": None, "Se": None}, {}, "MoS2"),
    ("Mo(S0.5Se0.5)2", {"Mo": 1.0}, {"S": 0.5, "Se": 0.5}, {}, "MoS2"),
    ("WS1.4Se0.6", {"W": 1.0}, {"S": 0.7, "Se": 0.3}, {}, "WS2"),
    ("MoS2:Re", {"Mo": 1.0}, {"S": 1.0}, {"Re": None}, "MoS2"),
    ("WSe2:V0.02,Cr", {"W": 1.0}, {"Se": 1.0}, {"V": 0.02, "Cr": None}, "WSe2"),
    ("MoS2:Re2%", {"Mo": 1.0}, {"S": 1.0}, {"Re": 0.02}, "MoS2"),
])
def test_compositions_parse(formula, metals, chalcogens, dopants, host):
    c = parse_composition(formula)
    for got, want in ((c.metals, metals), (c.chalcogens, chalcogens), (c.dopants, dopants)):
        assert [s for s, _ in got] == list(want)
        for (_, f), w in zip(got, want.values()):
            assert (f is None and w is None) or f == pytest.approx(w)
    assert c.host.name == host
    assert get_material(formula).name == host
    assert not c.is_binary


def test_alloy_lattice_constant_follows_vegard():
    a = get_material("Mo0.5W0.5Te2").a
    assert a == pytest.approx(0.5 * 3.52 + 0.5 * 3.55, abs=1e-3)
    assert get_material("MoS2:Re").a == MATERIALS["MoS2"].a  # dopants do not move it
    assert parse_composition("mote2").is_binary


@pytest.mark.parametrize("bad, why", [
    ("Mo", "no chalcogen"), ("XyZ2", "unknown element"), ("MoTe2:Q", "dopant"),
    ("CrS2", "no known host"), ("MoS2:Re1.5", "between 0 and 1"), ("", "empty"), ("Mo)Te2", "cannot read"),
])
def test_bad_formulas_say_why(bad, why):
    with pytest.raises(ValueError, match=why):
        parse_composition(bad)


@pytest.mark.parametrize("formula, host", [("(Cr,W)S2", "WS2"), ("(W,Cr)S2", "WS2"), ("Cr0.6W0.4Se2", "WSe2"),
                                           ("(V,Mo)S2", "MoS2"), ("(Mo,W)(S,Se)2", "MoS2")])
def test_an_alloy_whose_first_or_majority_metal_has_no_binary_takes_a_listed_one_as_host(formula, host):
    """A Cr-W alloy is a WS2 lattice with Cr on metal sites: the host is the listed metal
    that forms a known binary (before: an error, 'no known host CrS2')."""
    assert parse_composition(formula).host.name == host
