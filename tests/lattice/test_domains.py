"""Domains and roles: which sublattice is the metal, from the image."""

import numpy as np
import pytest
from scipy.spatial import cKDTree

from napari_tmd_defects.datasets import _simulate_item
from napari_tmd_defects.lattice import find_domains, x_brighter
from napari_tmd_defects.sites import ROLE_M, ROLE_X
from napari_tmd_defects.simulation import Boundary, Noise, simulate


def _role_accuracy(state, truth):
    """Share of indexed columns whose role matches the truth column they sit on (off the
    boundaries: within a lattice constant of one a column belongs to either side)."""
    xy = np.concatenate([truth.cell_x_site, truth.cell_m_site])
    role = np.r_[np.full(truth.n_cells, ROLE_X), np.full(truth.n_cells, ROLE_M)]
    off = np.r_[truth.interior, truth.interior]
    d, k = cKDTree(xy).query(state.graph.xy)
    ok = (d < 0.2 * truth.a_px) & (state.domain >= 0) & off[k]
    return float(np.mean(state.role[ok] == role[k[ok]])), int(ok.sum())


def _domain_role_accuracy(state, truth) -> dict[int, tuple[float, int]]:
    """Per domain: share of its columns on a true site (within 0.2 a) whose role matches
    that site's, and how many such columns it has (boundaries included)."""
    xy = np.concatenate([truth.cell_x_site, truth.cell_m_site])
    role = np.r_[np.full(truth.n_cells, ROLE_X), np.full(truth.n_cells, ROLE_M)]
    d, k = cKDTree(xy).query(state.graph.xy)
    on = d < 0.2 * truth.a_px
    out = {}
    for dom in state.domains:
        sel = on & (state.domain == dom.id)
        out[dom.id] = (float(np.mean(state.role[sel] == role[k[sel]])), int(sel.sum()))
    return out


def _structure_mose2_frame(k: int):
    """Frame ``k`` of the held-out structure_MoSe2 set (benchmarks/simulate_heldout.sh)."""
    seq = np.random.SeedSequence(9511).spawn(12)[k]
    return _simulate_item("MoSe2", (512, 512), "structure", seq,
                          dict(pixel_size=(0.06, 0.15), rotation="random", defect_fraction=(0.05, 0.2)))


@pytest.mark.parametrize("material", ["MoTe2", "WSe2", "MoS2"])
def test_roles_follow_the_material_contrast(material):
    sim = simulate(material, 320, pixel_size=0.1, rotation_deg=13, defect_fraction=0.1, noise=Noise(20, 5), seed=2)
    st = find_domains(sim.image, sim.truth.a_px, material)
    assert len(st.domains) == 1
    acc, n = _role_accuracy(st, sim.truth)
    assert n > 100 and acc > 0.99
    d = st.domains[0]
    assert d.rotation_deg == pytest.approx(sim.truth.rotation_deg, abs=1.5)
    assert (d.levels["X"] > d.levels["M"]) == x_brighter(material)


@pytest.mark.parametrize("kind, variant", [("mirror", "X"), ("mirror", "M"), ("inversion", "X"), ("translation", "X")])
def test_twin_inversion_and_translation_domains_get_their_own_roles(kind, variant):
    sim = simulate("MoSe2", 384, pixel_size=0.1, rotation_deg=5, defect_fraction=0.05, noise=Noise(30, 5), seed=6,
                   boundaries=[Boundary(kind, angle_deg=40, variant=variant, shift=(0.5, 0.0))])
    st = find_domains(sim.image, sim.truth.a_px, "MoSe2")
    assert len(st.domains) == 2
    acc, n = _role_accuracy(st, sim.truth)
    assert n > 150 and acc > 0.98


def test_an_alloy_like_contrast_does_not_split_into_domains():
    # metal and chalcogen columns about equally bright, with noise: one domain, not a patchwork
    sim = simulate("MoSe2", 384, pixel_size=0.1, defect_fraction=0.0, noise=Noise(6, 10), seed=8)
    st = find_domains(sim.image, sim.truth.a_px, "MoSe2")
    assert len(st.domains) == 1


def test_hexagon_votes_decide_an_ambiguous_hollow():
    sim = simulate("MoTe2", 320, pixel_size=0.1, defect_fraction=0.0, noise=Noise(None, 0), seed=1)
    st = find_domains(sim.image, sim.truth.a_px, "MoTe2")
    d = st.domains[0]
    good = (d.x_class, d.m_class)
    # pretend the intensities could not tell the hollow from the metal class
    h_cls = 3 - d.x_class - d.m_class
    lev = d.class_levels.copy()
    lev[d.m_class] = lev[h_cls]
    from napari_tmd_defects.lattice.domains import set_roles

    set_roles(d, np.array([lev[0], lev[1], lev[2]]) + np.array([0, 0, 0]), d.m_class, True)
    d.class_levels = lev
    assert (d.x_class, d.m_class) != good
    st.role[:] = np.where(st.graph.sublattice() == d.x_class, ROLE_X,
                          np.where(st.graph.sublattice() == d.m_class, ROLE_M, 2))
    notes = st.check_hollows(sim.truth.hex_center)
    assert (d.x_class, d.m_class) == good and d.roles_from_hexagons and notes


def test_a_weak_contrast_inversion_domain_is_still_found():
    # metal and chalcogen columns within ~15 % of each other, and the two domains balance
    # the patch's overall order: only the significance of the local order tells them apart
    from napari_tmd_defects.simulation import Optics

    sim = simulate("MoSe2", 384, pixel_size=0.1, rotation_deg=5, defect_fraction=0.05, noise=Noise(30, 5), seed=6,
                   optics=Optics(z_exponent=2.4), boundaries=[Boundary("inversion", angle_deg=40, shift=(0.5, 0.0))])
    st = find_domains(sim.image, sim.truth.a_px, "MoSe2")
    assert len(st.domains) == 2 and max(d.contrast for d in st.domains) < 0.2
    acc, n = _role_accuracy(st, sim.truth)
    assert n > 150 and acc > 0.98


def test_two_regions_needs_two_clearly_signed_groups():
    from napari_tmd_defects.lattice.domains import _two_regions

    rng = np.random.default_rng(0)
    assert _two_regions(np.r_[rng.normal(-5, 1, 100), rng.normal(5, 1, 200)])
    # one population with a long low tail (an alloy's fluctuations): no split
    assert not _two_regions(np.r_[rng.normal(5, 2.5, 300), rng.normal(0, 1.5, 60)])
    # clearly two groups, but both on the same side of zero: no swap
    assert not _two_regions(np.r_[rng.normal(1, 0.5, 100), rng.normal(8, 0.5, 100)])
    assert not _two_regions(np.r_[rng.normal(-5, 1, 10), rng.normal(5, 1, 200)])  # too few to be a domain


def test_the_mixed_sublattice_comes_from_the_composition():
    from napari_tmd_defects.lattice.domains import mixed_sublattice

    assert mixed_sublattice("Mo0.5W0.5Se2") == "M"
    assert mixed_sublattice("WS1.4Se0.6") == "X"
    # binaries and dilute dopants mix nothing the spread could show
    assert mixed_sublattice("MoTe2") is None and mixed_sublattice("MoS2:Re0.03") is None
    # both sublattices mixed (e.g. a real (Mo,W)(S,Se)2 frame): the spread cannot tell them apart
    assert mixed_sublattice("(W,Mo)(S,Se)2") is None and mixed_sublattice("Mo0.5W0.5SSe") is None


@pytest.mark.parametrize("seed", [3, 4])  # Mo the majority, W the majority
def test_an_equally_bright_alloy_takes_its_metal_sublattice_from_the_spread(seed, monkeypatch):
    # Z exponent 1.2: Se2 columns (2 x 34) slightly outshine the mean Mo/W column, so the
    # material's prior (Z^1.7: the metals brighter) puts the metal on the chalcogen sites;
    # the Mo/W sites spread far more than the Se2 ones
    import napari_tmd_defects.lattice.domains as dm
    from napari_tmd_defects.simulation import Optics

    sim = simulate("Mo0.5W0.5Se2", 320, pixel_size=0.1, rotation_deg=13, defect_fraction=0.05, noise=Noise(30, 5),
                   optics=Optics(z_exponent=1.2), seed=seed)
    st = find_domains(sim.image, sim.truth.a_px, "Mo0.5W0.5Se2")
    assert len(st.domains) == 1 and st.domains[0].contrast < 0.2
    acc, n = _role_accuracy(st, sim.truth)
    assert n > 100 and acc > 0.98
    assert st.domains[0].roles_from_spread and any("vary more" in s for s in st.notes)
    # without the spread the prior decides, wrongly here
    monkeypatch.setattr(dm, "MIN_SPREAD_Z", np.inf)
    st = find_domains(sim.image, sim.truth.a_px, "Mo0.5W0.5Se2")
    assert _role_accuracy(st, sim.truth)[0] < 0.1 and not st.domains[0].roles_from_spread


def test_a_binary_keeps_its_prior_where_metal_and_chalcogen_are_equally_bright():
    # no sublattice is mixed: the spread is not asked, the roles stay the material's
    sim = simulate("MoSe2", 320, pixel_size=0.1, rotation_deg=13, defect_fraction=0.05, noise=Noise(30, 5), seed=3)
    st = find_domains(sim.image, sim.truth.a_px, "MoSe2")
    assert st.mixed is None and not any(d.roles_from_spread for d in st.domains)
    assert _role_accuracy(st, sim.truth)[0] > 0.98


@pytest.mark.parametrize("material, ambiguous", [("(Mo,W)Se2", True), ("MoS2(1-x)Se2x", True),
                                                 ("(Mo,W)(S,Se)2", True), ("(Mo,W)S2", False),
                                                 ("WS2(1-x)Se2x", False), ("Mo0.5W0.5Se2", False), ("MoSe2", False)])
def test_open_shares_whose_end_members_disagree_on_the_brighter_column(material, ambiguous):
    from napari_tmd_defects.lattice import brighter_ambiguous

    assert brighter_ambiguous(material) is ambiguous


def test_a_guessed_metal_sublattice_is_warned_of():
    """Pure MoSe2 analysed as (Mo,W)Se2: the end members differ in which column is brighter
    and nothing in the frame shows the alloyed sublattice: the roles are a guess, and said so."""
    from napari_tmd_defects.pipeline import analyze

    sim = simulate("MoSe2", 288, 0.1, defect_fraction=0.05, seed=4, noise=Noise(15, 20))
    res = analyze(sim.image, 0.1, "(Mo,W)Se2", use_detector=False)
    assert any("which sublattice is the metal is a guess" in w for w in res.warnings)
    assert not any("which sublattice is the metal is a guess" in w
                   for w in analyze(sim.image, 0.1, "MoSe2", use_detector=False).warnings)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_a_heavier_minority_names_the_alloyed_sublattice_whatever_the_contrast(seed, monkeypatch):
    """Mo0.9W0.1Se2 given as (Mo,W)Se2: the equal-share prior makes the brighter class (here
    Se2) the metal; the W columns' tail of bright sites on the other class says which is
    alloyed. Without the tail test the roles come out swapped."""
    import napari_tmd_defects.lattice.domains as domains

    sim = simulate("Mo0.9W0.1Se2", 320, pixel_size=0.1, rotation_deg=11, defect_fraction=0.05,
                   noise=Noise(20, 10), seed=seed)
    acc, n = _role_accuracy(find_domains(sim.image, sim.truth.a_px, "(Mo,W)Se2"), sim.truth)
    assert n > 100 and acc > 0.99
    monkeypatch.setattr(domains, "_tail_decides", lambda *a, **k: False)
    assert _role_accuracy(find_domains(sim.image, sim.truth.a_px, "(Mo,W)Se2"), sim.truth)[0] < 0.01


@pytest.mark.parametrize("material", ["WSe2", "MoSe2", "Mo0.1W0.9Se2"])
def test_no_tail_no_swap(material):
    """Frames without a heavier minority keep the prior's roles under (Mo,W)Se2 (right for a
    W-rich frame; for pure MoSe2 a guess, warned of in the pipeline)."""
    sim = simulate(material, 320, pixel_size=0.1, rotation_deg=11, defect_fraction=0.05, noise=Noise(20, 10), seed=1)
    st = find_domains(sim.image, sim.truth.a_px, "(Mo,W)Se2")
    assert not any(d.roles_from_spread for d in st.domains)
    assert _role_accuracy(st, sim.truth)[0] > 0.99 or material == "MoSe2"


def _structure_frame(material, seed, pixel_size, rotation, optics, noise, distortion, boundaries):
    from napari_tmd_defects.simulation import Distortion, Optics

    return simulate(material, 384, pixel_size=pixel_size, rotation_deg=rotation, defect_fraction=0.11, seed=seed,
                    optics=Optics(**optics), noise=Noise(**noise), distortion=Distortion(**distortion),
                    boundaries=boundaries)


def test_a_translation_domain_stays_whole_where_the_chalcogen_is_not_seen():
    # WS2 at 100 kV, background-subtracted 8-bit, S columns at ~0.7 counts: the hollow and
    # the S sublattice look alike, so the hollow read column by column split the domain
    # behind a translation boundary into islands that the larger domain swallowed (16 V_W
    # invented on empty sites, the real W columns taken for S sites)
    sim = _structure_frame(
        "WS2", 4, 0.0713, 32.2,
        dict(voltage_kv=100.0, convergence_mrad=26.2, defocus_a=0.33, astigmatism_a=13.1, astigmatism_deg=105.5,
             source_fwhm_a=0.3, z_exponent=1.98),
        dict(poisson_lambda=5.6, gaussian_mu=18.4, background=0.136, contamination=0.2, contamination_scale_a=18.6,
             quantize_8bit=True, subtract_background=True),
        dict(row_jitter_px=0.78, row_jitter_corr=2.2, drift_px=(5.7, 13.9), bend_px=0.93, bend_period=1.67),
        [Boundary(kind="translation", angle_deg=108.8, offset=0.256, misorientation_deg=50.6, variant="X",
                  shift=(1 / 3, 0.5))])
    st = find_domains(sim.image, sim.truth.a_px, "WS2")
    assert len(st.domains) == 2
    metal = [d.m_class for d in st.domains]
    assert metal[0] != metal[1]  # the W columns of each domain are its metal sites


def test_two_balanced_inversion_domains_are_both_kept():
    # an inversion domain of ~60 columns in a bent Mo0.8W0.2Te2 frame: its columns show the
    # swapped order clearly, but the patch as a whole, half and half, has a low contrast, and
    # such patches took regions under 60 columns for noise (the domain read V_Te1 with W on
    # the Te2 columns: roles right at 41 % of the columns)
    from napari_tmd_defects.geometry import estimate_lattice
    from napari_tmd_defects.simulation import Distortion, Optics

    sim = simulate("Mo0.8W0.2Te2", 384, pixel_size=0.0824, rotation_deg=262.7, defect_fraction=0.137, seed=615004,
                   optics=Optics(convergence_mrad=25.9, defocus_a=3.87, source_fwhm_a=0.47, z_exponent=1.82),
                   noise=Noise(poisson_lambda=37.7, gaussian_mu=23.0, background=0.31, quantize_8bit=True),
                   distortion=Distortion(row_jitter_px=0.45, row_jitter_corr=2.45, drift_px=(-13.9, -0.2), bend_px=9.9,
                                         bend_period=0.83, flyback_px=13.7, flyback_width=0.044),
                   boundaries=[Boundary(kind="inversion", angle_deg=27.6, offset=0.038, misorientation_deg=-38.2,
                                        variant="X", shift=(1 / 3, 0.5))])
    a_px = estimate_lattice(sim.image, a_hint=sim.truth.a_px).a_px  # 3 % long: the bend stretches it
    st = find_domains(sim.image, a_px, "Mo0.8W0.2Te2")
    assert len(st.domains) == 2
    acc, n = _role_accuracy(st, sim.truth)
    assert n > 60 and acc > 0.95


def test_a_mirror_twin_with_faint_chalcogens_keeps_its_own_hollow():
    # WS1.4Se0.6 at 100 kV, background-subtracted 8-bit: the chalcogen columns stand only
    # ~0.2 of the span above the hollows, and the two mirror domains (same metal sublattice,
    # chalcogen and hollow swapped) blur the patch's median levels into "not seen"; the
    # hollow rule for unseen chalcogens must not merge them
    from napari_tmd_defects.simulation import Distortion, Optics

    sim = simulate("WS1.4Se0.6", 384, pixel_size=0.0882, rotation_deg=29.5, defect_fraction=0.075, seed=707005,
                   optics=Optics(voltage_kv=100.0, convergence_mrad=28.4, defocus_a=-0.65, astigmatism_a=16.0,
                                 astigmatism_deg=91.4, source_fwhm_a=0.51, z_exponent=1.9),
                   noise=Noise(poisson_lambda=32.4, gaussian_mu=20.6, background=0.37, contamination=0.14,
                               contamination_scale_a=5.3, quantize_8bit=True, subtract_background=True),
                   distortion=Distortion(row_jitter_px=1.07, row_jitter_corr=2.96, drift_px=(15.4, 7.5), bend_px=4.0,
                                         bend_period=0.94, flyback_px=8.7, flyback_width=0.06),
                   boundaries=[Boundary(kind="mirror", angle_deg=10.3, offset=0.042, misorientation_deg=48.8,
                                        variant="M", shift=(1 / 3, 0.0))])
    st = find_domains(sim.image, sim.truth.a_px, "WS1.4Se0.6")
    assert len(st.domains) == 2
    acc, n = _role_accuracy(st, sim.truth)
    assert n > 60 and acc > 0.95


def test_a_small_twin_domain_at_a_junction_keeps_its_metal_columns():
    # WS1.4Se0.6 at 100 kV, background-subtracted 8-bit: a grain boundary crossing a mirror
    # twin leaves a twin domain of ~15 columns at the junction of three domains. Its
    # chalcogen columns stand ~0.2 of the span above the hollow (S by W), consistently, so
    # the hollow rule for unseen chalcogens split it into two islands; each too small, both
    # were swallowed by the large domain, whose roles put the W columns on chalcogen sites
    # (16 V_W cells invented on empty sites, 5 of them in the domain's interior)
    from napari_tmd_defects.simulation import Distortion, Optics

    sim = simulate("WS1.4Se0.6", 384, pixel_size=0.10586883943078662, rotation_deg=62.07148124850585,
                   defect_fraction=0.05005087415744606, seed=707001,
                   optics=Optics(voltage_kv=100.0, convergence_mrad=30.939252669675064, defocus_a=1.1563806910239176,
                                 astigmatism_a=3.3233504636640254, astigmatism_deg=86.54879718634483,
                                 source_fwhm_a=0.9445808609475166, z_exponent=2.053536083071219,
                                 x1_fraction=0.44267372853549525),
                   noise=Noise(poisson_lambda=9.277609917706696, gaussian_mu=12.841332955799835,
                               background=0.3872020031012021, quantize_8bit=True, subtract_background=True),
                   distortion=Distortion(row_jitter_px=0.0, row_jitter_corr=3.101187088843131,
                                         drift_px=(10.041867276241083, 12.549318887266786), bend_px=1.9885212127807985,
                                         bend_period=2.398184195727983, flyback_px=11.886549881257109,
                                         flyback_width=0.046218342884260695),
                   boundaries=[Boundary(kind="grain", angle_deg=31.10518106768758, offset=-0.14191478511830424,
                                        misorientation_deg=-33.13138358279205, variant="X", shift=(1 / 3, 0.5)),
                               Boundary(kind="mirror", angle_deg=114.02473409083699, offset=0.3889541511134289,
                                        misorientation_deg=-49.77361890488737, variant="M", shift=(2 / 3, 0.0))])
    t = sim.truth
    st = find_domains(sim.image, t.a_px, "WS1.4Se0.6")
    # the W columns of the small domain (truth's smallest) keep the metal role
    small = np.argmin(np.bincount(t.cell_domain))
    d, k = cKDTree(t.cell_m_site).query(st.graph.xy)
    on = (d < 0.2 * t.a_px) & (t.cell_domain[k] == small) & (st.domain >= 0)
    assert on.sum() >= 10
    assert np.mean(st.role[on] == ROLE_M) >= 0.9


def test_a_corner_domain_whose_metal_is_not_found_is_kept():
    # an inversion domain of 4 cells in a corner of a MoTe2 frame blurred so that no Mo
    # column is found (as in multislice frames with ~1 Å of source blur): its Te columns
    # stand clearly on another class, an island kept as a domain of its own, but with 5-9
    # columns it fell under the 10 a domain needs and its columns were left without roles
    # (no cells there; the same in a multislice frame of the structure set)
    from napari_tmd_defects.simulation import Optics

    sim = simulate("MoTe2", 256, pixel_size=0.111, rotation_deg=-28.3, defect_fraction=0.05, noise=Noise(16, 20),
                   optics=Optics(source_fwhm_a=1.2), seed=1,
                   boundaries=[Boundary("inversion", angle_deg=135.0, offset=-0.7, misorientation_deg=10.7,
                                        variant="M", shift=(2 / 3, 0.5))])
    t = sim.truth
    st = find_domains(sim.image, t.a_px, "MoTe2")
    assert len(st.domains) == 2
    small = np.argmin(np.bincount(t.cell_domain))
    d, k = cKDTree(t.cell_x_site).query(st.graph.xy)
    on = (d < 0.2 * t.a_px) & (t.cell_domain[k] == small)
    assert on.sum() >= 4
    assert np.all(st.role[on] == ROLE_X) and np.all(st.domain[on] >= 0)


@pytest.mark.parametrize("seed", [0, 3])
def test_a_strip_domain_at_the_edge_is_not_outvoted(seed):
    # an inversion domain of 9 cells along the frame's edge (the boundary of a multislice
    # frame of the structure set, on the fast model): every column of it shows the swapped
    # order clearly, but the majority of each column's wider neighbourhood is the large
    # domain's, which swallowed the strip and gave its Te2 columns the metal role (every
    # one of its cells read V_Te1)
    sim = simulate("MoTe2", 256, pixel_size=0.111, rotation_deg=-28.3, defect_fraction=0.1, noise=Noise(16, 20),
                   seed=seed, boundaries=[Boundary("inversion", angle_deg=159.2, offset=-0.45, misorientation_deg=10.7,
                                                   variant="M", shift=(2 / 3, 0.5))])
    t = sim.truth
    st = find_domains(sim.image, t.a_px, "MoTe2")
    assert len(st.domains) == 2
    xy = np.concatenate([t.cell_x_site, t.cell_m_site])
    role = np.r_[np.full(t.n_cells, ROLE_X), np.full(t.n_cells, ROLE_M)]
    strip = np.r_[t.cell_domain, t.cell_domain] == np.argmin(np.bincount(t.cell_domain))
    d, k = cKDTree(xy).query(st.graph.xy)
    on_strip = (d < 0.2 * t.a_px) & (st.domain >= 0) & strip[k]
    assert on_strip.sum() >= 12
    assert np.mean(st.role[on_strip] == role[k[on_strip]]) >= 0.85


def test_noise_in_a_vacuum_hole_is_not_a_domain():
    # a frame of the held-out vacuum set: the noise "columns" linked across a large hole
    # show clear local orders, of a span far below the crystal's; they are no domain
    seq = np.random.SeedSequence(8101).spawn(6)[5]
    sim = _simulate_item("MoTe2", (512, 512), "realistic", seq,
                         dict(pixel_size=(0.06, 0.15), rotation="random", defect_fraction=(0.05, 0.2), vacuum=1.0))
    st = find_domains(sim.image, sim.truth.a_px, "MoTe2")
    assert len(st.domains) == 1


def test_a_small_domain_counts_its_cells_where_its_dimmer_columns_are_not_found():
    # two regions of 8 columns in a chain, each bordering the large region 0 only: one
    # of bright-class columns alone (the dimmer class too faint to be found, as in a
    # multislice frame with ~1 Å of source blur: 8 cells), one of both classes (4 cells)
    from napari_tmd_defects.lattice.domains import _clear_islands, _regions

    n0 = 40
    pattern = np.r_[np.full(n0, 1), np.full(8, 2), np.full(8, 2)]  # bright class 1 vs 2 (hollow 0)
    cls = np.r_[np.arange(n0) % 2 + 1, np.full(8, 2), np.tile([2, 1], 4)]
    chain = np.arange(len(pattern) - 1)
    lp, lq = chain, chain + 1
    cut = lp == n0 + 7  # the two small regions are not linked to each other ...
    lp, lq = np.r_[lp[~cut], 0], np.r_[lq[~cut], n0 + 8]  # ... but each to region 0
    _, comp, sizes = _regions(pattern, lp, lq)
    clear = np.full(len(pattern), 0.6)
    ok = _clear_islands(comp, sizes, pattern, lp, lq, clear, 1 - clear, np.ones(len(pattern)), cls,
                        np.zeros(len(pattern), int))
    assert ok[:n0].all()
    assert ok[n0:n0 + 8].all()
    assert not ok[n0 + 8:].any()


def test_a_narrow_domain_whose_neighbour_levels_tie_takes_its_roles_from_its_own_columns():
    # a frame of the held-out structure_MoSe2 set: a narrow inversion domain between two
    # boundaries, whose neighbourhoods reach across them: its Se2 and Mo levels tie (within
    # 1 %) while its Se2 columns stand ~30 % above its Mo columns; before, all its columns
    # took the swapped roles
    sim = _structure_mose2_frame(1)
    st = find_domains(sim.image, sim.truth.a_px, "MoSe2")
    for dom, (acc, n) in _domain_role_accuracy(st, sim.truth).items():
        assert n >= 20
        assert acc > 0.9, dom
    assert any("heights of its own columns" in n for n in st.notes)


def test_regions_whose_levels_give_the_same_roles_are_one_domain():
    # a frame of the held-out structure_MoSe2 set, low dose: one translation boundary. Below
    # it, the region near the boundary shows the Mo class a little brighter locally while
    # its levels give the same roles as the rest of that side: before, it became a domain of
    # its own, and a boundary with a band of unclassified cells ran through the crystal
    sim = _structure_mose2_frame(8)
    st = find_domains(sim.image, sim.truth.a_px, "MoSe2")
    variants = [(d.patch, d.x_class, d.m_class) for d in st.domains]
    assert len(variants) == len(set(variants))
    assert len(st.domains) == 2
    acc, n = _role_accuracy(st, sim.truth)
    assert n > 300 and acc > 0.99


def test_an_island_whose_own_sites_show_its_order_stays_a_domain_in_a_weak_contrast_patch():
    # a frame of the held-out structure_MoSe2 set: a triangular inversion domain of 59
    # columns (at the lattice constant the pipeline measures) in a patch whose two occupied
    # classes stand only 0.15 of the span apart, where islands of fewer than 60 columns
    # count as noise; its own Se2 sites stand 15 % of the span above its Mo sites (many
    # standard errors). Before, it took its neighbour's order: 44 columns with swapped roles
    from napari_tmd_defects.pipeline import locate_cells

    sim = _structure_mose2_frame(2)
    st = locate_cells(sim.image, sim.truth.pixel_size, "MoSe2").state
    assert len(st.domains) == 4
    for dom, (acc, n) in _domain_role_accuracy(st, sim.truth).items():
        assert acc > 0.95, dom


def test_an_inversion_domain_is_found_where_many_columns_but_not_the_patch_show_a_weak_contrast():
    # structure-stress MoSe2 frame 15 (384², 4 domains: an inversion and a mirror boundary,
    # 8-bit, 22 px of drift): Se2 stands ~25 % above Mo at the sites, but about half the
    # columns' surroundings show their two occupied classes less than 0.2 of the span apart,
    # and those took the patch's order. The patch as a whole (its other hollow's domains
    # included) stood just above 0.2, so the split of its columns by the sign of the classes'
    # difference was not tried: an inversion domain of 24 cells took its neighbour's order,
    # metal roles on its Se2 columns
    from conftest import structure_stress_frame

    from napari_tmd_defects.pipeline import locate_cells

    sim, ps = structure_stress_frame("MoSe2", 4, 15)
    st = locate_cells(sim.image, ps, "MoSe2").state
    t = sim.truth
    xy = np.concatenate([t.cell_x_site, t.cell_m_site])
    role = np.r_[np.full(t.n_cells, ROLE_X), np.full(t.n_cells, ROLE_M)]
    dom = np.r_[t.cell_domain, t.cell_domain]
    d, k = cKDTree(xy).query(st.graph.xy)
    on = (d < 0.2 * t.a_px) & (st.domain >= 0)
    sizes = np.bincount(t.cell_domain)
    assert len(sizes) == 4 and np.sum(sizes >= 20) == 3
    for true_dom in np.flatnonzero(sizes >= 20):  # (the fourth, 13 cells in a corner, is not read)
        sel = on & (dom[k] == true_dom)
        assert sel.sum() >= 40
        assert np.mean(st.role[sel] == role[k[sel]]) > 0.9, true_dom


def _linked_grid(side: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A side x side grid of columns linked to their 4 neighbours: positions (i, j) and the
    links' two ends."""
    ij = np.stack(np.meshgrid(np.arange(side), np.arange(side), indexing="ij"), -1).reshape(-1, 2)
    lin = np.arange(side * side).reshape(side, side)
    lp = np.r_[lin[:-1, :].ravel(), lin[:, :-1].ravel()]
    lq = np.r_[lin[1:, :].ravel(), lin[:, 1:].ravel()]
    return ij, lp, lq


def test_a_linked_swapped_region_is_found_and_a_scattered_tail_is_not():
    from napari_tmd_defects.lattice.domains import MIN_ISLAND_COLUMNS, _swapped_regions

    ij, lp, lq = _linked_grid(20)
    rng = np.random.default_rng(0)
    z = 8.0 + rng.normal(0.0, 1.0, len(ij))
    strip = ij[:, 1] < 2  # a strip two columns wide along an edge: 40 columns
    z[strip] = -5.0 + rng.normal(0.0, 1.0, strip.sum())
    rows = np.arange(len(ij))
    found = _swapped_regions(z, rows, lp, lq, len(ij))
    assert np.array_equal(found, strip)
    # the same number of negative columns scattered (a noisy patch's tail): no region
    z2 = 8.0 + rng.normal(0.0, 1.0, len(ij))
    z2[rng.choice(len(ij), strip.sum(), replace=False)] = -5.0
    assert not _swapped_regions(z2, rows, lp, lq, len(ij)).any()
    # a linked region smaller than an island, or one whose mean is not significant: none
    z3 = z.copy()
    z3[strip & (ij[:, 0] >= MIN_ISLAND_COLUMNS // 4)] = 8.0
    assert not _swapped_regions(z3, rows, lp, lq, len(ij)).any()
    assert not _swapped_regions(np.where(strip, -1.0, z), rows, lp, lq, len(ij)).any()


def test_a_narrow_swapped_region_counts_by_its_own_columns():
    from napari_tmd_defects.lattice.domains import MIN_RAW_SWAP_Z, _swapped_regions

    # a strip two columns wide whose smoothed values mix in its neighbours' (mean -1.5,
    # not significant), but whose own columns each show the other order
    ij, lp, lq = _linked_grid(20)
    rng = np.random.default_rng(1)
    strip = ij[:, 1] < 2
    z = np.where(strip, -1.5, 8.0) + rng.normal(0.0, 0.3, len(ij))
    rows = np.arange(len(ij))
    assert not _swapped_regions(z, rows, lp, lq, len(ij)).any()
    own = np.where(strip, -1.5, 1.0) + rng.normal(0.0, 1.0, len(ij))
    assert own[strip].sum() / np.sqrt(strip.sum()) < -MIN_RAW_SWAP_Z
    assert np.array_equal(_swapped_regions(z, rows, lp, lq, len(ij), own), strip)
    # own columns at the noise level (their sum within the bound): still none
    noise = np.where(strip, -0.5, 1.0) + rng.normal(0.0, 0.3, len(ij))
    assert noise[strip].sum() / np.sqrt(strip.sum()) > -MIN_RAW_SWAP_Z
    assert not _swapped_regions(z, rows, lp, lq, len(ij), noise).any()
