"""Site-state head: patches, network shapes, the shipped weights on an alloy frame, errors."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from napari_tmd_defects.evaluation import match_sites  # noqa: E402
from napari_tmd_defects.pipeline import locate_cells  # noqa: E402
from napari_tmd_defects.runtime import WeightsError, save_weights  # noqa: E402
from napari_tmd_defects.simulation import Noise, Optics, simulate  # noqa: E402
from napari_tmd_defects.sitehead import PATCH, SiteHead, build_site_head, load_site_head, site_patches  # noqa: E402
from napari_tmd_defects.sites import ROLE_M  # noqa: E402
from napari_tmd_defects.states import read_site_states  # noqa: E402


@pytest.fixture(scope="module")
def alloy_frame():
    """A Mo0.5W0.5Se2 frame at paper noise and its pipeline sites."""
    sim = simulate("Mo0.5W0.5Se2", 256, pixel_size=0.1, rotation_deg=17.0, defect_fraction=0.08, optics=Optics(),
                   noise=Noise(10.0, 20.0), seed=4321)
    frame = locate_cells(sim.image, 0.1, "Mo0.5W0.5Se2")
    assert frame.model is not None and len(frame.model.sites) > 100
    return sim, frame


def test_patches_and_network_shapes(alloy_frame):
    _, frame = alloy_frame
    model = frame.model
    p, scale = site_patches(frame.image, model)
    assert p.shape == (len(model.sites), 1, PATCH, PATCH) and p.dtype == np.float32
    assert np.all(np.isfinite(p)) and scale > 0
    # normalised: a found metal column's centre is of order one, whatever the gain
    m = (model.sites.role == ROLE_M) & ~model.sites.placed
    c = p[m, 0, PATCH // 2, PATCH // 2]
    assert 0.5 < np.median(c) < 2.0
    p10, _ = site_patches(frame.image * 10.0 + 50.0, model)
    np.testing.assert_allclose(p10, p, atol=1e-4)
    net = build_site_head(8).eval()
    with torch.inference_mode():
        out = net(torch.from_numpy(p[:5]))
    assert tuple(out.shape) == (5, 4)
    mean, logvar = SiteHead(net, {}).predict_patches(p[:7], model.sites.role[:7])
    assert mean.shape == logvar.shape == (7,)
    # only the metal sublattice from the head: the chalcogen sites are read from their heights
    plain = read_site_states(model, "Mo0.5W0.5Se2", image=frame.image)
    shipped = load_site_head(roles=("M",))
    mine = read_site_states(model, "Mo0.5W0.5Se2", image=frame.image, site_head=shipped)
    x = model.sites.role != ROLE_M
    np.testing.assert_array_equal(mine.state[x], plain.state[x])
    assert not np.array_equal(mine.level[~x], plain.level[~x]) and not mine.notes
    # a head whose output does not follow the image is not used (and says so)
    with torch.no_grad():
        for prm in net.parameters():
            prm.zero_()
        net[-1].bias.fill_(-3.0)
    junk = read_site_states(model, "Mo0.5W0.5Se2", image=frame.image, site_head=SiteHead(net, {}, roles=("M",)))
    np.testing.assert_array_equal(junk.state, plain.state)
    assert any("does not fit the column heights" in note for note in junk.notes)
    with pytest.raises(ValueError, match="roles"):
        SiteHead(net, {}, roles=("hollow",))


def test_shipped_head_separates_w_from_mo(alloy_frame):
    sim, frame = alloy_frame
    model = frame.model
    reading = load_site_head().read(frame.image, model)
    s = model.sites
    m = np.flatnonzero((s.role == ROLE_M) & ~s.boundary)
    j = match_sites(s.xy[m], sim.truth.cell_m_site, sim.truth.a_px)
    ok = j >= 0
    z = sim.truth.cell_m_z[j[ok]]
    sig = reading.signal[m[ok]]
    w, mo, vac = sig[z == 74], sig[z == 42], sig[z == 0]
    assert len(w) >= 15 and len(mo) >= 15
    # W columns read brighter than every Mo column but a few, vacancies darker than both
    thr = 0.5 * (np.median(w) + np.median(mo))
    assert np.mean(w > thr) > 0.95 and np.mean(mo < thr) > 0.95
    assert np.median(w) > 1.5 * np.median(mo)
    if len(vac):
        assert np.max(vac) < np.min(mo)
    assert np.all(reading.sigma > 0)


def test_read_site_states_with_head(alloy_frame):
    _, frame = alloy_frame
    st = read_site_states(frame.model, "Mo0.5W0.5Se2", image=frame.image, site_head="default")
    assert len(st.state) == len(frame.model.sites)
    assert st.fractions["M"].get("W", 0) > 0.3 and st.fractions["M"].get("Mo", 0) > 0.3
    with pytest.raises(ValueError, match="needs the image"):
        read_site_states(frame.model, "Mo0.5W0.5Se2", site_head="default")


def test_missing_or_wrong_weights(tmp_path):
    with pytest.raises(WeightsError, match="not found"):
        load_site_head(tmp_path / "nothing.pt")
    bad = tmp_path / "corrupt.pt"
    bad.write_bytes(b"not a torch file")
    with pytest.raises(WeightsError, match="corrupt"):
        load_site_head(bad)
    other = tmp_path / "other.pt"
    save_weights(other, build_site_head(8).state_dict(), {"task": "unit-cell defect classification (CNN-2)"})
    with pytest.raises(WeightsError, match="site-state head"):
        load_site_head(other)
    wrong = tmp_path / "wrong.pt"
    save_weights(wrong, build_site_head(8).state_dict(), {"task": "site-state head", "width": 16, "patch": PATCH,
                                                           "half_width_a": 1.0})
    with pytest.raises(WeightsError, match="does not hold"):
        load_site_head(wrong)


def test_analyze_and_the_command_line_take_the_head(alloy_frame, tmp_path, monkeypatch):
    import napari_tmd_defects.batch as batch
    from napari_tmd_defects import analyze
    from napari_tmd_defects.cli import build_parser

    sim, _ = alloy_frame
    plain = analyze(sim.image, 0.1, "Mo0.5W0.5Se2", device="cpu", site_head=None)
    head = analyze(sim.image, 0.1, "Mo0.5W0.5Se2", device="cpu")  # the shipped head by default
    assert "site_head" in head.models and "site_head" not in plain.models
    m = head.sites.sites.role == ROLE_M
    assert not np.array_equal(head.site_states.level[m], plain.site_states.level[m])
    np.testing.assert_array_equal(head.site_states.state[~m], plain.site_states.state[~m])
    # a binary is read from its heights either way; a missing head fails before any work
    mote2 = simulate("MoTe2", 256, pixel_size=0.1, defect_fraction=0.1, seed=8).image
    np.testing.assert_array_equal(analyze(mote2, 0.1, device="cpu").site_states.level,
                                  analyze(mote2, 0.1, device="cpu", site_head=None).site_states.level)
    with pytest.raises(WeightsError, match="not found"):
        analyze(sim.image, 0.1, "Mo0.5W0.5Se2", site_head=tmp_path / "none.pt")
    # the command line: the shipped head unless --no-site-head, or --site-head WEIGHTS
    seen = []
    monkeypatch.setattr(batch, "run_batch", lambda inputs, opts, **kw: seen.append(opts) or [])
    for extra, want in (([], "default"), (["--no-site-head"], None), (["--site-head", "mine.pt"], "mine.pt")):
        args = build_parser().parse_args(["analyze", str(tmp_path), "--out", str(tmp_path / "o"), *extra])
        args.func(args)
        assert seen[-1].site_head == want


def test_a_layer_with_a_light_metal_is_read_from_its_heights():
    sim = simulate("WSe2:V0.05", 224, pixel_size=0.1, defect_fraction=0.08, noise=Noise(10.0, 20.0), seed=77)
    frame = locate_cells(sim.image, 0.1, "WSe2:V0.05")
    plain = read_site_states(frame.model, "WSe2:V0.05", image=frame.image)
    head = read_site_states(frame.model, "WSe2:V0.05", image=frame.image, site_head="default")
    np.testing.assert_array_equal(head.state, plain.state)
    np.testing.assert_array_equal(head.level, plain.level)
    assert not any("head" in note for note in head.notes)  # the heights are the reading: nothing to say
    # analyze does not load it for such a layer (nor records it with the models)
    from napari_tmd_defects import analyze

    assert "site_head" not in analyze(sim.image, 0.1, "WSe2:V0.05", device="cpu").models
