"""Site states read from column intensities (:mod:`napari_tmd_defects.states`)."""

import math
from collections import Counter

import numpy as np
import pytest

from napari_tmd_defects.evaluation import match_sites
from napari_tmd_defects.materials import get_material, parse_composition
from napari_tmd_defects.pipeline import analyze, locate_cells
from napari_tmd_defects.simulation import Noise, simulate
from napari_tmd_defects.sites import ROLE_M, ROLE_X
from napari_tmd_defects.states import read_site_states


def _read(formula, seed=0, noise=Noise(12, 20)):
    sim = simulate(formula, 320, 0.1, defect_fraction=0.15, class_weights=(1, 1, 3, 1, 1), seed=seed,
                   noise=noise, rotation_deg=7.0)
    frame = locate_cells(sim.image, 0.1, formula)
    return sim.truth, frame.model, read_site_states(frame.model, formula)


def _matched(model, truth, role):
    s = model.sites
    idx = np.flatnonzero((s.role == role) & ~s.boundary)
    true_xy = truth.cell_m_site if role == ROLE_M else truth.cell_x_site
    j = match_sites(s.xy[idx], true_xy, truth.a_px)
    return idx[j >= 0], j[j >= 0]


@pytest.mark.parametrize("formula, sub", [("Mo0.8W0.2Te2", 74), ("MoS2:Re0.06", 75), ("WSe2:Cr0.06", 24)])
def test_vacancies_and_substituents_are_told_apart(formula, sub):
    truth, model, st = _read(formula, seed=2)
    idx, j = _matched(model, truth, ROLE_M)
    z = truth.cell_m_z[j]
    assert np.sum(z == sub) >= 5 and np.sum(z == 0) >= 3
    state = st.state[idx]
    host = get_material(formula).metal
    called_sub = ~np.isin(state, ["vacant", "unresolved", host])
    # vacancy vs substitution at >= 97 % of the sites that are either
    either = (z == 0) | (z == sub)
    right = np.where(z == 0, state == "vacant", called_sub)
    assert right[either].mean() >= 0.97
    assert np.mean(state[z == get_material(formula).z_metal] == host) >= 0.98
    # the substituent's effective Z within 15 %
    zeff = st.z_eff[idx][z == sub]
    assert np.nanmedian(np.abs(zeff - sub) / sub) <= 0.15


def test_chalcogen_columns_count_their_atoms_and_species():
    truth, model, st = _read("MoS1.2Se0.8", seed=1, noise=Noise(40, 8))
    idx, j = _matched(model, truth, ROLE_X)
    n_true = (truth.cell_x_z[j] > 0).sum(axis=1)
    atoms = st.atoms[idx]
    read = atoms >= 0
    assert read.mean() >= 0.9
    assert np.mean(atoms[read] == n_true[read]) >= 0.97
    full = read & (n_true == 2)
    zs = np.sort(truth.cell_x_z[j][full], axis=1)
    want = np.array([{16: "S", 34: "Se"}[a] + {16: "S", 34: "Se"}[b] for a, b in zs])
    assert np.mean(st.state[idx][full] == want) >= 0.9
    assert set(st.fractions["X"]) >= {"SS", "SSe", "SeSe"}


def test_noise_makes_states_unresolved_not_vacancies():
    """A frame too noisy to read single chalcogen atoms: unresolved and a detection limit,
    not a harvest of vacancies."""
    truth, model, st = _read("WS2", seed=3, noise=Noise(2.0, 30))
    idx, j = _matched(model, truth, ROLE_X)
    n_true = (truth.cell_x_z[j] > 0).sum(axis=1)
    called_v = np.isin(st.state[idx], ["vacant", "S"])
    if called_v.any():
        assert np.mean(n_true[called_v] < 2) >= 0.9  # what is called is right
    limits = st.detection_limits["X"]
    assert limits["S"] == "undetectable" or limits["S"]["min_detectable_sites"] > 3


def test_detection_limits_are_reported():
    _, _, st = _read("MoTe2", seed=4)
    lim = st.detection_limits["M"]["vacant"]
    assert 2.71 <= lim["min_detectable_sites"] < 20
    assert lim["min_detectable_cm2"] > 1e11
    assert 0.5 <= lim["detection_probability"] <= 1.0


def test_alloy_in_the_pipeline_counts_substituents_not_vacancies(tmp_path):
    sim = simulate("Mo0.7W0.3Te2", 320, 0.1, defect_fraction=0.08, seed=5, noise=Noise(12, 20))
    res = analyze(sim.image, 0.1, "Mo0.7W0.3Te2", detector=None, use_detector=False)
    truth_vm = int(np.sum(sim.truth.cell_m_z[sim.truth.interior] == 0))
    got_vm = res.counts()["V_Mo"] + res.counts()["V_Te1+V_Mo"] + res.counts()["V_Te2+V_Mo"]
    assert abs(got_vm - truth_vm) <= 2
    sites = res.site_state_counts()["M"]
    n_w = int(np.sum(sim.truth.cell_m_z[sim.truth.interior] == 74))
    assert abs(sites.get("W", 0) - n_w) <= max(3, 0.05 * n_w)
    summary = res.summary()
    assert summary["material"] == "Mo0.7W0.3Te2"
    assert "vacant" in summary["site_reading"]["detection_limits"]["M"]
    table = res.table()
    assert {"m_state", "m_z_eff", "x_column", "x_atoms"} <= set(table)
    path = res.write_csv(tmp_path / "cells.csv")
    assert "m_state" in path.read_text().splitlines()[0]


def test_an_open_alloy_reads_the_same_whatever_the_formula_order():
    """Open fractions name no host: (Mo,W) and (W,Mo) give the same sites, and the host is
    the species the image shows most of (here W, with a few Mo columns)."""
    sim = simulate("Mo0.04W0.96Se2", 320, 0.1, defect_fraction=0.05, seed=6, noise=Noise(20, 10))
    a, b = (analyze(sim.image, 0.1, f, use_detector=False) for f in ("(Mo,W)Se2", "(W,Mo)Se2"))
    ma, mb = a.site_state_counts()["M"], b.site_state_counts()["M"]
    assert ma == mb
    assert a.site_states.host["M"] == b.site_states.host["M"] == "W"
    n_mo = int(np.sum(sim.truth.cell_m_z[sim.truth.interior] == 42))
    assert abs(ma.get("Mo", 0) - n_mo) <= max(3, 0.1 * n_mo)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_ragged_median_equals_numpy_median_per_list(dtype):
    from napari_tmd_defects.states import _ragged_median

    rng = np.random.default_rng(0)
    v = rng.normal(size=300).astype(dtype)
    lists = [rng.choice(300, size=k, replace=False) for k in rng.integers(0, 30, 400)] + [np.zeros(0, int)]
    counts = np.array([len(i) for i in lists])
    got = _ragged_median(v, lists, counts)
    want = np.array([np.median(v[i]) if len(i) else np.nan for i in lists], dtype)
    assert got.dtype == dtype
    assert np.array_equal(got, want, equal_nan=True)  # bit for bit, odd and even counts
    v[5] = np.nan  # a non-finite value: numpy's own result
    lists = [np.array([5, 6, 7]), np.array([6, 7])]
    got = _ragged_median(v, lists, np.array([3, 2]))
    assert np.isnan(got[0]) and got[1] == np.median(v[[6, 7]])


def _chalcogen_reading(sd, seed=0, empty_level=0.2):
    """Synthetic WSe2 chalcogen heights (grey levels, host 100) with flat noise ``sd`` (host
    units) and empty columns raised by blur: the count called per site and the truth."""
    from napari_tmd_defects.states import MIN_POSTERIOR, _chalcogen_candidates, _fit, _posterior

    rng = np.random.default_rng(seed)
    cand = _chalcogen_candidates(parse_composition("WSe2"), 34, 80.0)
    x1 = float(cand.signal[cand.atoms == 1][0])
    n_true = np.r_[np.full(300, 2), np.full(10, 1), np.full(10, 0)]
    mean = np.select([n_true == 2, n_true == 1], [1.0, empty_level + (1 - empty_level) * x1], empty_level)
    h = 100.0 * (mean + sd * rng.standard_normal(len(mean)))
    k, s, w, _, _, vac, cand = _fit(h, cand, cand.names.index("SeSe"), fixed_fractions=True)
    post, _ = _posterior(h, k, s, w, cand, vac)
    p_count = np.stack([post[:, cand.atoms == a].sum(axis=1) for a in (0, 1, 2)], axis=1)
    called = np.where(p_count.max(axis=1) >= MIN_POSTERIOR, p_count.argmax(axis=1), -1)
    return called, n_true, _unresolvable_x1(k, s, cand, vac)


def _unresolvable_x1(k, s, cand, vac):
    from napari_tmd_defects.states import _unresolvable

    return bool(_unresolvable(k, s, cand, vac)[cand.atoms == 1].all())


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_one_atom_chalcogen_columns_are_called_only_where_the_noise_allows(seed):
    # low noise: the one-atom columns are found, and every call is right
    called, n_true, weak = _chalcogen_reading(0.05, seed)
    assert not weak
    assert np.mean(called[n_true == 1] == 1) >= 0.8
    assert np.all(n_true[called == 1] == 1) and np.all(n_true[called == 0] == 0)
    # noise comparable to the step between levels (a hard, blurred frame): no one-atom call,
    # and the state is undetectable in this frame
    called, n_true, weak = _chalcogen_reading(0.2, seed)
    assert weak
    assert not np.any(called == 1)


def _mixed_chalcogen_model(seed, sd=0.2, empty_level=0.4):
    """A WS1.4Se0.6 site model whose chalcogen heights (grey levels, SS column 100) stand on a
    blurred frame's raised empty level, with flat noise ``sd`` (SS units): 300 full columns
    in the composition's shares, 12 one-atom S columns and 12 empty ones. Returns the model,
    the true atoms per chalcogen site and those sites' indices."""
    from napari_tmd_defects.sites import CellSites, SiteModel, Sites
    from napari_tmd_defects.states import _chalcogen_candidates

    rng = np.random.default_rng(seed)
    cand = _chalcogen_candidates(parse_composition("WS1.4Se0.6"), 16, 80.0)
    full = [cand.names.index(n) for n in ("SS", "SSe", "SeSe")]
    pick = np.r_[rng.choice(full, 300, p=[0.49, 0.42, 0.09]), np.full(12, cand.names.index("S")),
                 np.full(12, cand.names.index("vacant"))]
    mean = np.where(cand.signal[pick] > 0, empty_level + (1 - empty_level) * cand.signal[pick], empty_level)
    hx = 100.0 * (mean + sd * rng.standard_normal(len(pick)))
    hm = 400.0 * (1 + 0.05 * rng.standard_normal(300))
    n = len(hm) + len(hx)
    role = np.r_[np.full(len(hm), ROLE_M), np.full(len(hx), ROLE_X)]
    sites = Sites(xy=rng.uniform(0, 500, (n, 2)), role=role, domain=np.zeros(n, int), nm=np.zeros(n, int),
                  placed=np.zeros(n, bool), height=np.r_[hm, hx], boundary=np.zeros(n, bool),
                  basis=np.zeros((n, 2)), fitted=np.ones(n, bool))
    none = np.zeros(0, int)
    cells = CellSites(x=none, m=none, domain=none, frame=none, boundary=np.zeros(0, bool), boxes=np.zeros((0, 4)))
    return SiteModel(sites=sites, domains=[], cells=cells, a_px=30.0), cand.atoms[pick], np.flatnonzero(role == ROLE_X)


def test_mixed_chalcogen_columns_on_a_blurred_frame_are_read_right_or_unresolved():
    """S and Se columns spread over three full levels and blur raises the empty columns to
    0.4 of an SS column: the empty level comes from the full columns' levels, and the empty
    and one-atom columns within the full columns' noise are unresolved, not confident full
    columns (the calls' confidence means probability)."""
    right, n_read, empty_as_full, calls_p = 0, 0, 0, []
    for seed in range(4):
        model, n_true, ix = _mixed_chalcogen_model(seed)
        st = read_site_states(model, "WS1.4Se0.6")
        assert abs(st.empty_level["X"] - 0.4) <= 0.1  # fitted, not pinned at 0 or at the range's edge
        atoms = st.atoms[ix]
        read = atoms >= 0
        right += int(np.sum(atoms[read] == n_true[read]))
        n_read += int(read.sum())
        empty_as_full += int(np.sum(atoms[n_true == 0] == 2))
        calls_p.append(st.count_probability[ix][read])
        assert read.mean() >= 0.6  # doubtful sites only: most full columns stay read
    assert right / n_read >= 0.98
    assert right / n_read >= np.mean(np.concatenate(calls_p)) - 0.02  # confidence means probability
    assert empty_as_full <= 1  # of 48 empty columns


def test_an_open_chalcogen_alloy_reads_the_same_whatever_the_formula_order():
    """An open chalcogen alloy's levels are relative to its most common full column, not to
    the formula's first chalcogen: both orders read the same columns."""
    sim = simulate("WS1.4Se0.6", 320, 0.1, defect_fraction=0.05, seed=7, noise=Noise(20, 10))
    a, b = (analyze(sim.image, 0.1, f, use_detector=False) for f in ("WS2(1-x)Se2x", "WSe2(1-x)S2x"))
    xa, xb = a.site_state_counts()["X"], b.site_state_counts()["X"]
    assert xa == xb
    assert a.site_states.host["X"] == b.site_states.host["X"] == "SS"


def test_an_end_member_under_an_open_formula_reads_as_itself_or_not_at_all():
    """A pure WS2 or WSe2 frame analysed as WS2(1-x)Se2x: the chalcogen fit alone cannot say
    which pair its one level is (its scale is free); the metal columns of the same domain
    can, roughly (the calibrated chalcogen/metal ratio). The columns read as the end member,
    or, where the other pairs keep weight, as ``2 atoms?`` with a note: never as another pair
    (a WS2 frame read SeSe before)."""
    for formula, pair in (("WS2", "SS"), ("WSe2", "SeSe")):
        sim = simulate(formula, 288, 0.1, defect_fraction=0.05, seed=3, noise=Noise(15, 20))
        st = analyze(sim.image, 0.1, "WS2(1-x)Se2x", use_detector=False).site_states
        counts = Counter(st.state[st.atoms == 2].tolist())
        assert counts[pair] + counts["2 atoms?"] >= 0.95 * sum(counts.values())
        assert counts["2 atoms?"] == 0 or any("cannot be told" in note for note in st.notes)


def test_local_heights_in_blocks_of_sites_are_the_same(monkeypatch):
    """Neighbour lists taken a block of sites at a time give the same local heights."""
    from napari_tmd_defects import states

    _, model, _ = _read("MoTe2", seed=2)
    whole = states._local_heights(model)
    monkeypatch.setattr(states, "_NEIGHBOUR_BLOCK", 7)
    blocks = states._local_heights(model)
    assert np.array_equal(blocks, whole) and not np.array_equal(whole, model.sites.height)


def _clipped_frame(formula, seed=0, background=0.3):
    """An 8-bit export whose brightest metal columns are cut flat at 255."""
    sim = simulate(formula, 320, 0.1, defect_fraction=0.15, class_weights=(1, 1, 3, 1, 1), seed=seed,
                   noise=Noise(40, 15, background=background, quantize_8bit=True), rotation_deg=7.0)
    return sim, locate_cells(sim.image, 0.1, formula).model


def test_dopant_columns_cut_flat_by_an_8bit_export_are_read_as_the_dopant():
    from napari_tmd_defects.states import clipped_share

    sim, model = _clipped_frame("MoS2:Re0.06")
    idx, j = _matched(model, sim.truth, ROLE_M)
    z = sim.truth.cell_m_z[j]
    assert np.sum(z == 75) >= 5 and np.sum(z == 0) >= 3
    # the Re columns' cores sit at the ceiling, the Mo columns' far less
    share = clipped_share(sim.image, model)[idx]
    assert share[z == 75].min() >= 0.9 > np.median(share[z == 42])
    # without the image the cut Re columns fit no listed level
    blind = read_site_states(model, "MoS2:Re0.06").state[idx]
    assert not np.any(blind[z == 75] == "Re")
    st = read_site_states(model, "MoS2:Re0.06", image=sim.image)
    state = st.state[idx]
    assert np.mean(state[z == 75] == "Re") >= 0.9
    assert np.mean(state[z == 42] == "Mo") >= 0.98 and not np.any(state[z == 42] == "Re")
    assert np.all(state[z == 0] == "vacant")
    # a cut column shows a lower bound of its intensity: flagged, no effective Z from it
    assert np.all(st.clipped[idx][z == 75])
    assert np.all(np.isnan(st.z_eff[idx][z == 75]))
    assert any("ceiling" in note for note in st.notes)


def test_the_mean_a_ceiling_cut_off_is_put_back():
    from napari_tmd_defects.states import declipped_heights

    rng = np.random.default_rng(0)
    for mean in (240.0, 255.0, 270.0):  # a core's pixels about a mean near a ceiling of 255
        px = rng.normal(mean, 40.0, (2000, 30))
        cut = np.minimum(px, 255.0)
        share = np.mean(cut >= 255.0, axis=1)
        back = declipped_heights(cut.mean(axis=1), share, 40.0)
        assert abs(np.mean(back) - mean) < 0.05 * 40.0 < abs(np.mean(cut) - mean)
    # nothing at the ceiling: unchanged; a core cut whole: at most the bound's excess
    assert declipped_heights(np.array([100.0]), np.array([0.0]), 40.0)[0] == 100.0
    assert declipped_heights(np.array([100.0]), np.array([1.0]), 40.0)[0] == pytest.approx(100.0 + 40.0 * 1.3289,
                                                                                          abs=0.01)
    # a height above a background that the ceiling cut as much: nothing to put back; one
    # far below the ceiling: all of the core's loss
    assert declipped_heights(np.array([50.0]), np.array([0.5]), 40.0, np.array([255.0]), 255.0)[0] == pytest.approx(50.0)
    assert declipped_heights(np.array([50.0]), np.array([0.5]), 40.0, np.array([55.0]), 255.0)[0] == pytest.approx(
        50.0 + 40.0 * 0.3989, abs=0.01)


def test_one_atom_columns_of_an_export_that_cut_the_full_ones_are_read():
    """An 8-bit export whose full Te columns reach the ceiling in part (noise carries some
    of their pixels over it): their heights fall short and a one-atom column stands too
    high against them to fit its level (``unresolved``) unless the cut mean is put back
    from the frame's pixel noise."""
    from napari_tmd_defects.noise import estimate_noise
    from napari_tmd_defects.states import clipped_share

    sim = simulate("MoTe2", 320, 0.12, defect_fraction=0.2, class_weights=(1, 3, 1, 1, 1), seed=0,
                   noise=Noise(30, 15, background=0.3, quantize_8bit=True), rotation_deg=7.0)
    model = locate_cells(sim.image, 0.12, "MoTe2").model
    idx, j = _matched(model, sim.truth, ROLE_X)
    atoms = np.count_nonzero(sim.truth.cell_x_z[j] > 0, axis=1)
    assert np.sum(atoms == 1) >= 8 and np.sum(atoms == 0) >= 3
    share = clipped_share(sim.image, model)[idx]
    assert 0.2 < np.median(share[atoms == 2]) < 0.9  # partly cut, not flat
    est = estimate_noise(sim.image)
    # the pixel noise at the ceiling: 255²/λ + μ² grey levels² (λ = 30, μ = 15)
    assert est.pixel_std(255.0) == pytest.approx(math.sqrt(255.0**2 / 30 + 15.0**2), rel=0.15)
    before = read_site_states(model, "MoTe2", image=sim.image).state[idx]
    after = read_site_states(model, "MoTe2", image=sim.image, noise=est).state[idx]
    assert np.mean(before[atoms == 1] == "Te") <= 0.5
    assert np.all(after[atoms == 1] == "Te")
    assert np.all(after[atoms == 2] == "TeTe") and np.all(after[atoms == 0] == "vacant")


def test_an_unclipped_image_changes_no_reading():
    from napari_tmd_defects.states import clipped_share

    sim = simulate("MoS2:Re0.06", 256, 0.1, defect_fraction=0.15, class_weights=(1, 1, 3, 1, 1), seed=3,
                   noise=Noise(12, 20), rotation_deg=7.0)
    model = locate_cells(sim.image, 0.1, "MoS2:Re0.06").model
    assert not np.any(clipped_share(sim.image, model))
    a = read_site_states(model, "MoS2:Re0.06")
    b = read_site_states(model, "MoS2:Re0.06", image=sim.image)
    assert np.array_equal(a.state, b.state) and not b.clipped.any()
    np.testing.assert_array_equal(a.z_eff, b.z_eff)
    np.testing.assert_array_equal(a.probability, b.probability)


def test_a_light_substituent_column_is_at_least_as_noisy_as_an_empty_one():
    """The metal levels' noise: a column between empty and the host (a light dopant) is read
    against at least the empty columns' fitted spread, rising to the host's at its level;
    the host, heavier columns and the chalcogen states keep the signal-scaled noise."""
    from napari_tmd_defects.states import _chalcogen_candidates, _levels, _metal_candidates, _var

    comp = parse_composition("WSe2:Cr0.04")
    cand = _metal_candidates(comp, 74, 80.0)
    k, sd, vac = 100.0, 0.07, (0.02, 0.055)
    mu, var = _levels(k, sd, cand, vac)
    cr, w = cand.names.index("Cr"), cand.names.index("W")
    assert 0 < cand.signal[cr] < 1
    assert var[cr] >= (k * vac[1]) ** 2 > _var(k, sd, cand.signal, cand.flat)[cr]
    assert var[cr] <= (k * sd) ** 2
    assert var[w] == pytest.approx(_var(k, sd, cand.signal, cand.flat)[w])
    # an empty-column spread above the host's does not raise the host's noise
    assert _levels(k, sd, cand, (0.02, 0.2))[1][w] == pytest.approx((k * sd) ** 2)
    xc = _chalcogen_candidates(parse_composition("WSe2"), 34, 80.0)
    assert not xc.empty_noise_floor


@pytest.mark.parametrize("formula, strict_metal, seed, dose", [("WSe2:Cr0.06", True, 4, 3), ("Mo0.8W0.2S2", False, 3, 2)])
def test_faint_columns_short_of_atoms_need_the_stricter_posterior(monkeypatch, formula, strict_metal, seed, dose):
    """In an alloy or doped layer a chalcogen column short of atoms, and a light-metal layer's
    vacant metal site, is called only at MIN_VACANCY_POSTERIOR: the calls between it and
    MIN_POSTERIOR become ``unresolved`` and nothing else changes."""
    import napari_tmd_defects.states as states

    sim = simulate(formula, 320, 0.1, defect_fraction=0.15, class_weights=(1, 1, 3, 1, 1), seed=seed,
                   noise=Noise(dose, 20), rotation_deg=7.0)
    model = locate_cells(sim.image, 0.1, formula).model
    strict = read_site_states(model, formula)
    p_min = states.MIN_VACANCY_POSTERIOR
    assert p_min > states.MIN_POSTERIOR
    monkeypatch.setattr(states, "MIN_VACANCY_POSTERIOR", states.MIN_POSTERIOR)
    loose = read_site_states(model, formula)
    s = model.sites
    short = np.where(s.role == ROLE_X, (loose.atoms >= 0) & (loose.atoms < 2), loose.state == "vacant")
    applies = (s.role == ROLE_X) | strict_metal
    between = short & applies & (loose.count_probability < p_min)
    assert between.any()
    changed = strict.state != loose.state
    np.testing.assert_array_equal(changed, between)
    assert np.all(strict.state[changed] == "unresolved")
    # every call short of atoms left stands at the stricter posterior where it applies
    kept = np.where(s.role == ROLE_X, (strict.atoms >= 0) & (strict.atoms < 2), strict.state == "vacant") & applies
    assert np.all(strict.count_probability[kept] >= p_min)
    if not strict_metal:  # a layer of heavy metals: its metal vacancies are called as before
        m_vac = (s.role == ROLE_M) & (loose.state == "vacant")
        assert np.array_equal(strict.state[m_vac], loose.state[m_vac])


def test_the_level_fit_stops_at_its_fixed_point():
    """The EM fit stops once a step returns its parameters unchanged: more allowed steps
    change nothing, bit for bit (metal levels with the contrast exponent fitted)."""
    from napari_tmd_defects.states import _fit, _metal_candidates

    rng = np.random.default_rng(5)
    cand = _metal_candidates(parse_composition("Mo0.8W0.2Se2"), 42, 80.0)
    sig = cand.signal[[cand.names.index("Mo"), cand.names.index("W"), cand.names.index("vacant")]]
    h = 100.0 * np.concatenate([sig[0] + 0.05 * rng.standard_normal(400), sig[1] + 0.05 * rng.standard_normal(100),
                                sig[2] + 0.03 * rng.standard_normal(20)])
    a = _fit(h, cand, cand.names.index("Mo"), fixed_fractions=True, fit_gamma=True)
    b = _fit(h, cand, cand.names.index("Mo"), fixed_fractions=True, fit_gamma=True, n_iter=400)
    assert a[0] == b[0] and a[1] == b[1] and a[3] == b[3] and a[4] == b[4] and a[5] == b[5]
    np.testing.assert_array_equal(a[2], b[2])
    np.testing.assert_array_equal(a[6].signal, b[6].signal)


@pytest.mark.parametrize("sd", [0.03, 0.06, 0.1])
def test_the_order_of_a_mixed_host_column_along_the_beam_is_not_read_as_noise(sd):
    """An S/Se column is 5 % brighter or darker as S or Se faces the beam (80 kV): where such
    columns are the most common, the fitted noise leaves that split out instead of taking
    it for noise (which would leave every level too wide)."""
    import dataclasses

    from napari_tmd_defects.states import _chalcogen_candidates, _fit
    from napari_tmd_defects.zcontrast import chalcogen_order_split

    cand = _chalcogen_candidates(parse_composition("WS1Se1"), 16, 80.0)
    i = {n: cand.names.index(n) for n in ("SS", "SSe", "SeSe")}
    assert cand.order_split[i["SSe"]] == chalcogen_order_split(16, 34, 80.0) > 0.04
    assert cand.order_split[i["SS"]] == cand.order_split[i["SeSe"]] == 0.0
    rng = np.random.default_rng(3)
    h = []
    for name, n in (("SS", 250), ("SSe", 500), ("SeSe", 250)):
        s = cand.signal[i[name]] * np.ones(n)
        if name == "SSe":
            s *= 1 + cand.order_split[i[name]] * rng.choice([-1, 1], n)
        h.append(100 * (s + sd * np.sqrt(0.5 + 0.5 * s) * rng.standard_normal(n)))
    h = np.concatenate(h)
    with_split = _fit(h, cand, i["SSe"], fixed_fractions=False)[1]
    without = _fit(h, dataclasses.replace(cand, order_split=None), i["SSe"], fixed_fractions=False)[1]
    assert with_split == pytest.approx(sd, rel=0.4)
    assert without > 1.25 * with_split


def test_the_split_aware_noise_of_quantised_residuals_is_finite():
    """Residuals that are mostly exactly zero (a flat, quantised export) give no noise,
    not a division by zero; the split-free case is 1.4826 times their median."""
    from napari_tmd_defects.states import _split_sigma

    assert _split_sigma(np.r_[np.zeros(6), np.ones(4)], 0.1) == 0.0
    rng = np.random.default_rng(0)
    r = rng.standard_normal(20000)
    assert _split_sigma(r, 0.0) == pytest.approx(1.0, rel=0.03)
    assert _split_sigma(0.1 * rng.choice([-1, 1], 20000) + 0.05 * r, 0.1) == pytest.approx(0.05, rel=0.1)


def _mo_rich_heights(seed: int, n: int = 2000) -> np.ndarray:
    """Metal column heights of a Mo-rich (Mo,W) frame as a real one shows them: the Mo host
    with a low shoulder (12 % at 0.72 of its level: neighbours' tails, strain) and 3 % W
    columns at the calibrated ratio, twice as bright."""
    rng = np.random.default_rng(seed)
    return 100.0 * np.concatenate([1.0 + 0.08 * rng.standard_normal(int(0.85 * n)),
                                   0.72 + 0.1 * rng.standard_normal(int(0.12 * n)),
                                   2.1 + 0.12 * rng.standard_normal(int(0.03 * n))])


@pytest.mark.parametrize("seed", range(4))
def test_an_open_metal_alloy_is_named_by_the_columns_at_the_calibrated_ratio(seed):
    """(Mo,W)S2 with a Mo host whose low shoulder a "W host" fit takes as Mo by squeezing the
    contrast exponent to its bound (its likelihood is the better one: the trap that named a
    real Mo-rich frame W under JPEG or a black canvas): the frame's metal is the one whose
    other columns stand at the calibrated ratio."""
    from napari_tmd_defects.states import _fit, _main_state, _metal_candidates, _open_metal_mode

    cand = _metal_candidates(parse_composition("(Mo,W)S2"), 42, 80.0)
    h = _mo_rich_heights(seed)
    free = _fit(h, cand, -1, fixed_fractions=False, fit_gamma=True)
    assert cand.names[_main_state(free[6], free[2])] == "W"  # the trap is there
    mode, share, _ = _open_metal_mode(h, cand)
    assert cand.names[mode] == "Mo" and share >= 0.95


def test_an_open_metal_end_member_alone_names_no_metal():
    """One metal level and nothing at another's ratio: Mo and W fit it alike, so the frame's
    metal is not named (``metal?``), whatever the noise draws."""
    from napari_tmd_defects.states import MIN_POSTERIOR, _metal_candidates, _open_metal_mode

    cand = _metal_candidates(parse_composition("(Mo,W)S2"), 42, 80.0)
    for seed in range(4):
        h = 100.0 * (1.0 + 0.08 * np.random.default_rng(seed).standard_normal(2000))
        assert _open_metal_mode(h, cand)[1] < MIN_POSTERIOR


@pytest.mark.parametrize("formula, metal", [("MoS2", "Mo"), ("WS2", "W")])
def test_a_pure_frame_under_an_open_metal_formula_is_named_by_its_chalcogen_columns(formula, metal):
    """MoS2 or WS2 analysed as (Mo,W)S2: one metal level, which Mo and W fit alike; the S2
    columns' calibrated ratio to it names the metal (before: W on either frame, by the
    likelihood's noise)."""
    sim = simulate(formula, 288, 0.1, defect_fraction=0.05, seed=4, noise=Noise(15, 20))
    st = analyze(sim.image, 0.1, "(Mo,W)S2", use_detector=False).site_states
    m = Counter(st.state[st.atoms == 1].tolist())
    assert st.host["M"] == metal
    assert m[metal] >= 0.95 * sum(m.values())


def test_an_alloy_far_from_the_calibrated_ratio_is_still_named_by_the_fit_that_explains_it():
    """(Cr,W)S2 whose Cr columns stand at 0.41 of W (the calibration says 0.21: γ 0.57, out of the
    plausible range; a real frame: 0.36-0.4): named W with its Cr, not Cr with one
    level (a fit outside the range pays per site it places, it is not dropped)."""
    from napari_tmd_defects.states import _metal_candidates, _open_metal_mode

    cand = _metal_candidates(parse_composition("(Cr,W)S2"), 74, 80.0)
    rng = np.random.default_rng(0)
    h = 100.0 * np.concatenate([1.0 + 0.08 * rng.standard_normal(1300), 0.41 + 0.05 * rng.standard_normal(520)])
    mode, share, _ = _open_metal_mode(h, cand)
    assert cand.names[mode] == "W" and share >= 0.95
