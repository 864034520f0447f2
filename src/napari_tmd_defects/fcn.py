"""FCN baseline (the paper's comparison): a U-Net segments atomic columns pixel by pixel,
then each lattice site is classified from the pixel classes around it.

This is the AtomAI-style approach 2DIP-Net is compared with (paper, Fig. 5). Pixel classes:
0 background, 1 metal column, 2 full chalcogen column (2 atoms), 3 half chalcogen column
(1 atom); vacant sites are background. Images are resampled to the detector's sampling
(lattice constant ``A_PX`` px) and normalised per image. Sites come from the classical
lattice fit (lattice completion), so vacancies are sites too. At a chalcogen site the
mean pixel probabilities in a disc decide 0 / 1 / 2 missing atoms; at a metal site,
column vs background. The "proportion of confidence" (POC) of V_X1 vs V_X2 at a site is
the ratio of the half-column and background probabilities there.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
from scipy import ndimage as ndi

from .materials import CLASS_VACANCIES, N_CLASSES, get_material

__all__ = ["A_PX", "FCNSegmenter", "analyze_fcn", "build_unet", "column_targets", "train_fcn"]

#: Lattice constant in px at which the U-Net works (MoTe2 at 0.12 Å/px).
A_PX = 29.33
#: Column disc radius in the targets, in units of a.
DISC_RADIUS = 0.2
N_PIXEL_CLASSES = 4


def build_unet(base: int = 16, depth: int = 3, in_channels: int = 1, n_classes: int = N_PIXEL_CLASSES):
    """A small U-Net (conv-BN-ReLU x2 per level, max-pool down, transposed-conv up)."""
    import torch
    from torch import nn

    def block(cin, cout):
        return nn.Sequential(
            nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
            nn.Conv2d(cout, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
        )

    class UNet(nn.Module):
        def __init__(self):
            super().__init__()
            ch = [base * 2**k for k in range(depth + 1)]
            self.down = nn.ModuleList([block(in_channels, ch[0])] + [block(ch[k], ch[k + 1]) for k in range(depth)])
            self.up = nn.ModuleList([nn.ConvTranspose2d(ch[k + 1], ch[k], 2, stride=2) for k in reversed(range(depth))])
            self.dec = nn.ModuleList([block(2 * ch[k], ch[k]) for k in reversed(range(depth))])
            self.head = nn.Conv2d(ch[0], n_classes, 1)

        def forward(self, x):
            skips = []
            for k, blk in enumerate(self.down):
                x = blk(x if k == 0 else torch.nn.functional.max_pool2d(x, 2))
                skips.append(x)
            x = skips.pop()
            for up, dec in zip(self.up, self.dec):
                x = up(x)
                s = skips.pop()
                x = dec(torch.cat([x[..., : s.shape[-2], : s.shape[-1]], s], dim=1))
            return self.head(x)

    return UNet()


def _normalize(img: np.ndarray) -> np.ndarray:
    s = ndi.gaussian_filter(img, 1.0)
    lo, hi = np.percentile(s, [1.0, 99.5])
    return ((img - lo) / max(hi - lo, 1e-6)).astype(np.float32)


def _to_canonical(img: np.ndarray, pixel_size: float, material: str) -> tuple[np.ndarray, float]:
    """Resample so that the lattice constant is A_PX px; returns (image, zoom factor)."""
    zoom = A_PX / (get_material(material).a / pixel_size)
    if abs(zoom - 1) < 1e-3:
        return img.astype(np.float32), 1.0
    return ndi.zoom(img, zoom, order=1).astype(np.float32), zoom


def column_targets(truth, shape: tuple[int, int], zoom: float = 1.0) -> np.ndarray:
    """Pixel classes for an image of ``shape`` from ground truth (positions scaled by ``zoom``)."""
    lab = np.zeros(shape, np.int64)
    r = DISC_RADIUS * truth.a_px * zoom
    vac = np.asarray(CLASS_VACANCIES)[truth.cell_label]
    yy, xx = np.mgrid[-int(r) - 1 : int(r) + 2, -int(r) - 1 : int(r) + 2]
    for sites, values in (
        (truth.cell_m_site, np.where(vac[:, 1] == 1, 0, 1)),
        (truth.cell_x_site, np.choose(vac[:, 0], [2, 3, 0])),
    ):
        for (x, y), v in zip(sites * zoom, values):
            if v == 0:
                continue
            cx, cy = int(round(x)), int(round(y))
            disc = (xx + cx - x) ** 2 + (yy + cy - y) ** 2 <= r * r
            ys, xs = yy[disc] + cy, xx[disc] + cx
            ok = (ys >= 0) & (ys < shape[0]) & (xs >= 0) & (xs < shape[1])
            lab[ys[ok], xs[ok]] = v
    return lab


class FCNSegmenter:
    """A trained U-Net with its card; ``probabilities(image, pixel_size)`` -> (4, rows, cols)."""

    def __init__(self, model, card: dict[str, Any], device="cpu"):
        self.model = model.eval().to(device)
        self.card = card
        self.device = device

    @classmethod
    def load(cls, path: str | Path | None = None, device: str = "auto") -> "FCNSegmenter":
        """Weights from ``path`` (default: the shipped ``weights/fcn.pt``)."""
        from .runtime import default_weights, load_weights, resolve_device

        sd, card = load_weights(default_weights("fcn") if path is None else path)
        model = build_unet(card.get("base", 16), card.get("depth", 3))
        model.load_state_dict(sd)
        return cls(model, card, resolve_device(device))

    def probabilities(self, image: np.ndarray, pixel_size: float, material: str = "MoTe2") -> np.ndarray:
        """Per-pixel class probabilities at the input's own sampling."""
        import torch

        img, zoom = _to_canonical(np.asarray(image, float), pixel_size, material)
        x = torch.from_numpy(_normalize(img))[None, None].to(self.device)
        pad_h, pad_w = (-x.shape[-2]) % 8, (-x.shape[-1]) % 8
        x = torch.nn.functional.pad(x, (0, pad_w, 0, pad_h), mode="reflect")
        with torch.inference_mode():
            p = torch.softmax(self.model(x), dim=1)[0, :, : img.shape[0], : img.shape[1]].cpu().numpy()
        if zoom != 1.0:
            f = (image.shape[0] / img.shape[0], image.shape[1] / img.shape[1])
            p = np.stack([ndi.zoom(c, f, order=1)[: image.shape[0], : image.shape[1]] for c in p])
        return p


def _disc_mean(prob: np.ndarray, sites: np.ndarray, r: float) -> np.ndarray:
    """Mean of each probability map in discs of radius ``r`` px around sites -> (N, C)."""
    k = int(math.ceil(r))
    yy, xx = np.mgrid[-k : k + 1, -k : k + 1]
    disc = xx**2 + yy**2 <= r * r
    ker = disc / disc.sum()
    out = np.stack([ndi.correlate(c, ker, mode="nearest") for c in prob])
    return np.stack([ndi.map_coordinates(c, [sites[:, 1], sites[:, 0]], order=1, mode="nearest") for c in out], 1)


def analyze_fcn(image: np.ndarray, pixel_size: float, material: str, segmenter: FCNSegmenter):
    """Classify every unit cell with the FCN baseline -> :class:`analysis.Result`.

    ``probabilities`` holds the class probabilities built from the site states; the
    POC of V_X1 vs V_X2 is ``probabilities[:, 1] / (probabilities[:, 1] + probabilities[:, 2])``.
    """
    from .pipeline import locate_cells, make_result

    t0 = time.perf_counter()
    frame = locate_cells(image, pixel_size, material)
    model = frame.model
    if model is None or len(model.cells) == 0:
        return make_result(frame, np.zeros(0, int), np.zeros(0), None)
    s, c = model.sites, model.cells
    x_sites, m_sites = s.xy[c.x], s.xy[c.m]
    a_px = frame.a_px
    # the segmenter rescales by the material's lattice constant: give it the one measured here
    mat = get_material(material)
    prob = segmenter.probabilities(frame.image, mat.a / a_px, mat.name)
    r = DISC_RADIUS * a_px
    px_ = _disc_mean(prob, x_sites, r)  # (N, 4)
    pm_ = _disc_mean(prob, m_sites, r)
    # chalcogen site: 0 missing <- class 2, 1 missing <- class 3, 2 missing <- background
    x_state = np.stack([px_[:, 2], px_[:, 3], px_[:, 0]], axis=1) + 1e-9
    x_state /= x_state.sum(axis=1, keepdims=True)
    m_state = np.stack([pm_[:, 1], pm_[:, 0]], axis=1) + 1e-9
    m_state /= m_state.sum(axis=1, keepdims=True)
    probs = np.zeros((len(c), N_CLASSES))
    for k, (nvx, vm) in enumerate(CLASS_VACANCIES):
        probs[:, k] = x_state[:, nvx] * m_state[:, int(vm)]
    frame.models["fcn"] = segmenter.card.get("name", "U-Net")
    res = make_result(frame, probs.argmax(axis=1), probs.max(axis=1), probs)
    res.timings["total"] = time.perf_counter() - t0
    return res


def _training_pair(rng: np.random.Generator, crop: int, material: str, preset: str):
    from .datasets import sample_conditions
    from .simulation import simulate

    kw = sample_conditions(preset, rng, (crop, crop), pixel_size=(0.06, 0.15), defect_fraction=(0.2, 0.5))
    ps = kw.pop("pixel_size")
    native = int(crop * (get_material(material).a / ps) / A_PX) + 4
    sim = simulate(material, native, pixel_size=ps, seed=int(rng.integers(2**31)), **kw)
    img, zoom = _to_canonical(sim.image, ps, material)
    lab = column_targets(sim.truth, img.shape, zoom)
    return _normalize(img)[:crop, :crop], lab[:crop, :crop]


def train_fcn(
    out: str | Path,
    steps: int = 3000,
    batch: int = 8,
    crop: int = 160,
    pool: int = 1500,
    lr: float = 1e-3,
    seed: int = 0,
    material: str = "MoTe2",
    base: int = 16,
    depth: int = 3,
    progress: Callable[[int, int], None] | None = None,
    log: Callable[[str], None] | None = None,
) -> Path:
    """Train the U-Net on simulated images (40 % paper, 60 % realistic presets).

    ``pool`` image crops are simulated first (deterministic by ``seed``); batches draw
    from them with random flips and quarter turns (pixel labels turn with the image).

    Ground truth lists only cells whose box lies inside the image, so columns near the
    border may be unlabelled: the loss ignores a margin of one lattice constant.
    """
    import torch

    from .runtime import save_weights

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    model = build_unet(base, depth)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps)
    weight = torch.tensor([0.5, 1.0, 1.0, 2.0])
    margin = int(math.ceil(A_PX))
    t0 = time.perf_counter()
    data = []
    for k in range(pool):
        data.append(_training_pair(rng, crop, material, "paper" if rng.random() < 0.4 else "realistic"))
        if log and (k + 1) % 250 == 0:
            log(f"simulated {k + 1}/{pool} training crops {time.perf_counter() - t0:.0f} s")
    px = np.stack([d[0] for d in data])
    py = np.stack([d[1] for d in data])
    del data
    t_data = time.perf_counter() - t0
    losses = []
    for step in range(steps):
        idx = rng.integers(0, pool, batch)
        xs, ys = px[idx], py[idx]
        k = int(rng.integers(4))
        xs, ys = np.rot90(xs, k, axes=(1, 2)), np.rot90(ys, k, axes=(1, 2))
        if rng.random() < 0.5:
            xs, ys = xs[:, ::-1], ys[:, ::-1]
        x = torch.from_numpy(np.ascontiguousarray(xs))[:, None]
        y = torch.from_numpy(np.ascontiguousarray(ys))
        model.train()
        logits = model(x)
        loss_map = torch.nn.functional.cross_entropy(logits, y, weight=weight, reduction="none")
        loss = loss_map[:, margin:-margin, margin:-margin].mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        losses.append(float(loss.detach()))
        if progress:
            progress(step + 1, steps)
        if log and (step + 1) % 100 == 0:
            log(f"step {step + 1}/{steps} loss {np.mean(losses[-100:]):.4f} {time.perf_counter() - t0:.0f} s")
    card = {
        "name": "FCN baseline (U-Net column segmentation)",
        "base": base, "depth": depth, "a_px": A_PX, "steps": steps, "batch": batch, "crop": crop,
        "lr": lr, "seed": seed, "material": material, "presets": "paper 40 % / realistic 60 %, on the fly",
        "pool": pool, "final_loss": float(np.mean(losses[-100:])),
        "simulation_seconds": round(t_data, 1), "train_seconds": round(time.perf_counter() - t0 - t_data, 1),
        "hardware": f"{torch.get_num_threads()} CPU threads",
    }
    return save_weights(out, model.state_dict(), card)
