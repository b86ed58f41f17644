"""New feature vectors for the classes that have few, for the head re-training stage (cRT).

A tail class of 6 real images gives the re-trained head 6 points (x views) to draw a boundary around.
LDMLR (Han et al., CVPRW 2024) trains a class-conditional diffusion model on the frozen backbone's
features of every class and re-trains the head on real + generated features; its control is a Gaussian
per class. Both are here, with one interface (scikit-learn style: ``fit`` on real features, then
``sample`` the classes asked for)::

    gen = FEATURE_GENERATORS["diffusion"](steps=1500).fit(feats, labels, seed=0)   # or feature_generator(cfg)
    new = gen.sample(np.full(100, 5), seed=0)                 # 100 feature vectors of class 5
    feats, labels, synthetic = fill_features(feats, labels, gen, seed=0)   # every class up to the largest

Neither sees an image: they cost seconds to a minute on a CPU, on top of a trained classifier.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..utils.training import check_finite


class GaussianFeatures:
    """A Gaussian per class: the class's mean, and a covariance shrunk towards the pooled within-class one
    (a class of 24 vectors in 1,280 dimensions has no covariance of its own worth the name), with weight
    ``n_c / (n_c + prior)`` on its own."""

    def __init__(self, prior: float = 100.0):
        self.prior = prior

    @classmethod
    def from_config(cls, cfg) -> "GaussianFeatures":
        """Unfitted, for a :class:`~tailfill.config.HeadConfig` (it needs none of its keys)."""
        return cls()

    def fit(self, feats: np.ndarray, labels: np.ndarray, seed: int = 0) -> "GaussianFeatures":
        x, y = np.asarray(feats, np.float64), np.asarray(labels)
        self.classes_ = np.unique(y)
        self.means_ = {c: x[y == c].mean(0) for c in self.classes_}
        centred = x - np.stack([self.means_[c] for c in y])
        pooled = centred.T @ centred / max(len(x) - len(self.classes_), 1)
        self.scales_ = {}
        for c in self.classes_:
            own = centred[y == c]
            w = len(own) / (len(own) + self.prior)
            cov = w * (own.T @ own / max(len(own) - 1, 1)) + (1 - w) * pooled
            vals, vecs = np.linalg.eigh(cov)
            self.scales_[c] = vecs * np.sqrt(np.clip(vals, 0, None))  # x = mean + scale @ z, z ~ N(0, I)
        return self

    def sample(self, labels: np.ndarray, seed: int = 0) -> np.ndarray:
        rng = np.random.default_rng(seed)
        labels = np.asarray(labels)
        out = np.empty((len(labels), len(next(iter(self.means_.values())))), np.float32)
        for c in np.unique(labels):
            idx = np.flatnonzero(labels == c)
            z = rng.standard_normal((len(idx), out.shape[1]))
            out[idx] = self.means_[c] + z @ self.scales_[c].T
        return out


class FeatureDenoiser(nn.Module):
    """An MLP that predicts the noise in a feature vector from it, the timestep and the class: residual
    blocks, each told the timestep and class by an added embedding."""

    def __init__(self, dim: int, num_classes: int, hidden: int = 512, blocks: int = 3):
        super().__init__()
        self.hidden = hidden
        self.inp = nn.Linear(dim, hidden)
        self.time = nn.Sequential(nn.Linear(hidden, hidden), nn.SiLU(), nn.Linear(hidden, hidden))
        self.label = nn.Embedding(num_classes, hidden)
        self.blocks = nn.ModuleList(nn.Sequential(nn.LayerNorm(hidden), nn.SiLU(), nn.Linear(hidden, hidden))
                                    for _ in range(blocks))
        self.out = nn.Sequential(nn.LayerNorm(hidden), nn.SiLU(), nn.Linear(hidden, dim))

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        from diffusers.models.embeddings import get_timestep_embedding

        cond = self.time(get_timestep_embedding(t, self.hidden)) + self.label(y)
        h = self.inp(x)
        for block in self.blocks:
            h = h + block(h + cond)
        return self.out(h)


class FeatureDiffusion:
    """LDMLR's generator: a class-conditional DDPM on standardised features (trained on every class, as they
    come, so the tail's conditionals borrow from the head's), sampled with DDIM."""

    def __init__(self, steps: int = 1500, batch_size: int = 256, lr: float = 1e-3, hidden: int = 512,
                 sample_steps: int = 50, prediction: str = "sample"):
        self.steps, self.batch_size, self.lr, self.hidden, self.sample_steps = steps, batch_size, lr, hidden, sample_steps
        self.prediction = prediction  # sample: the denoiser predicts the clean vector (LDMLR's pred_x0)

    @classmethod
    def from_config(cls, cfg) -> "FeatureDiffusion":
        """Unfitted, trained for ``cfg.feature_steps`` steps (a :class:`~tailfill.config.HeadConfig`)."""
        return cls(steps=cfg.feature_steps)

    def fit(self, feats: np.ndarray, labels: np.ndarray, seed: int = 0) -> "FeatureDiffusion":
        from diffusers import DDPMScheduler

        x = torch.as_tensor(np.asarray(feats), dtype=torch.float32)
        y = torch.as_tensor(np.asarray(labels), dtype=torch.long)
        # a floor under the scale: dimensions that are (almost) always 0 after the backbone's ReLU would
        # otherwise be blown up by standardising, and so would the model's errors on them
        std = x.std(0)
        self.mean_, self.std_ = x.mean(0), std.clamp_min(float(std.mean()) * 0.1 + 1e-6)
        self.low_, self.high_ = x.min(0).values, x.max(0).values
        x = (x - self.mean_) / self.std_
        torch.manual_seed(seed)
        gen = torch.Generator().manual_seed(seed)
        # features are not bounded like pixels: no clipping of the x0 estimate
        self.scheduler_ = DDPMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2", clip_sample=False,
                                        prediction_type=self.prediction)
        self.model_ = FeatureDenoiser(x.shape[1], int(y.max()) + 1, self.hidden)
        opt = torch.optim.AdamW(self.model_.parameters(), lr=self.lr, weight_decay=0.0)
        self.losses_ = []
        self.model_.train()
        for step in range(self.steps):
            idx = torch.randint(len(x), (min(self.batch_size, len(x)),), generator=gen)
            noise = torch.randn(len(idx), x.shape[1], generator=gen)
            t = torch.randint(0, 1000, (len(idx),), generator=gen)
            target = x[idx] if self.prediction == "sample" else noise
            loss = F.mse_loss(self.model_(self.scheduler_.add_noise(x[idx], noise, t), t, y[idx]), target)
            check_finite(loss, f"feature diffusion step {step}",
                         "its input was finite; head.feature_fill: gaussian trains nothing and cannot diverge")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            self.losses_.append(loss.item())
        self.model_.eval()
        return self

    @torch.no_grad()
    def sample(self, labels: np.ndarray, seed: int = 0) -> np.ndarray:
        from diffusers import DDIMScheduler

        scheduler = DDIMScheduler.from_config(self.scheduler_.config)
        scheduler.set_timesteps(self.sample_steps)
        gen = torch.Generator().manual_seed(seed)
        y = torch.as_tensor(np.asarray(labels), dtype=torch.long)
        x = torch.randn(len(y), len(self.mean_), generator=gen)
        for t in scheduler.timesteps:
            x = scheduler.step(self.model_(x, t.expand(len(y)), y), t, x).prev_sample
        # within the range the real features span (>= 0 after a ReLU backbone)
        return torch.maximum(torch.minimum(x * self.std_ + self.mean_, self.high_), self.low_).numpy()


def feature_generator(cfg):
    """The generator ``cfg.feature_fill`` names (``cfg`` a :class:`~tailfill.config.HeadConfig`), unfitted."""
    from .methods import FEATURE_GENERATORS

    return FEATURE_GENERATORS.get(cfg.feature_fill).from_config(cfg)


def fill_features(feats: np.ndarray, labels: np.ndarray, generator, seed: int = 0):
    """``feats`` plus, for every class with fewer than the largest, generated vectors up to its count (the
    generator fitted here, on ``feats``): (features, labels, synthetic mask)."""
    labels = np.asarray(labels)
    bad = ~np.isfinite(np.asarray(feats)).all(1)
    if bad.any():  # one NaN vector would turn a class's mean, and every vector drawn for it, into NaN
        raise ValueError(f"head.feature_fill: {bad.sum()} of {len(bad)} feature vectors are not finite "
                         f"(the first is row {np.flatnonzero(bad)[0]}, class {labels[bad][0]}); the backbone diverged")
    counts = np.bincount(labels)
    want = np.repeat(np.arange(len(counts)), np.where(counts > 0, counts.max() - counts, 0))
    if len(want) == 0:
        return np.asarray(feats), labels, np.zeros(len(labels), bool)
    new = generator.fit(feats, labels, seed).sample(want, seed)
    return (np.concatenate([np.asarray(feats, np.float32), new.astype(np.float32)]), np.concatenate([labels, want]),
            np.concatenate([np.zeros(len(labels), bool), np.ones(len(want), bool)]))
