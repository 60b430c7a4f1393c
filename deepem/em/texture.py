"""The texture term of the E-step (not in the paper): how well a proposal's appearance agrees
with the attenuation its weak label's record gives (solid, part-solid, ground glass).

A proposal's appearance is the mean and spread of the network's input intensities in its core
(the voxels within a quarter of its diameter of its centre, at least one voxel). The model is
one Gaussian per texture over those two numbers, fitted on the E-step's own evidence: every
weak label with a texture lends its proposals, weighted by their posterior without the
texture term, to its texture's Gaussian (a soft M-step of a two-feature class model; no
other data needed). log p(texture | proposal) is then the class log-likelihoods normalised
over the textures (equal priors); a texture that no label had gets a constant column, which
leaves its labels' posteriors unchanged."""
import numpy as np
import torch

from ..data.datasets import normalize
from ..data.tables import WEAK_TEXTURES

RIDGE = 1e-3  # added to each covariance's diagonal (input units^2): a class of one point stays proper
MIN_WEIGHT = 1.0  # a texture needs at least this much posterior mass (about one label) to be fitted


def core_features(image, proposals):
    """[P, 2] float64: mean and standard deviation of the normalised input intensities within
    max(1, d / 4) voxels of each proposal's centre (z, y, x, d in grid voxels)."""
    img = normalize(image)
    props = np.asarray(proposals, dtype=np.float64).reshape(-1, 5)
    out = np.zeros((len(props), 2))
    shape = np.asarray(img.shape)
    for i, (_, z, y, x, d) in enumerate(props):
        r = max(1.0, d / 4.0)
        c = np.array([z, y, x])
        lo = np.clip(np.floor(c - r).astype(int), 0, shape - 1)
        hi = np.clip(np.ceil(c + r).astype(int) + 1, 1, shape)
        grid = np.meshgrid(*[np.arange(a, b) for a, b in zip(lo, hi)], indexing="ij")
        inside = sum((g - v) ** 2 for g, v in zip(grid, c)) <= r * r
        values = img[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]][inside]
        if values.size == 0:  # a centre outside the volume: its nearest voxel
            values = img[tuple(np.clip(np.rint(c).astype(int), 0, shape - 1))][None]
        out[i] = values.mean(), values.std()
    return out


def fit(features, textures, weights, num_textures=len(WEAK_TEXTURES)):
    """Per texture, the weighted mean [2] and covariance [2, 2] of the features of its labels'
    proposals (None for a texture with less than MIN_WEIGHT of posterior mass)."""
    features = np.asarray(features, dtype=np.float64).reshape(-1, 2)
    textures, weights = np.asarray(textures).reshape(-1), np.asarray(weights, dtype=np.float64).reshape(-1)
    model = []
    for t in range(num_textures):
        w = np.where(textures == t, weights, 0.0)
        total = w.sum()
        if total < MIN_WEIGHT:
            model.append(None)
            continue
        mean = (w[:, None] * features).sum(0) / total
        dev = features - mean
        cov = (w[:, None, None] * dev[:, :, None] * dev[:, None, :]).sum(0) / total + RIDGE * np.eye(2)
        model.append((mean, cov))
    return model


def log_probs(features, model):
    """[P, K] log p(texture | proposal) under `model` (fit's output)."""
    features = np.asarray(features, dtype=np.float64).reshape(-1, 2)
    ll = np.zeros((len(features), len(model)))
    fitted = [t for t, m in enumerate(model) if m is not None]
    for t in fitted:
        mean, cov = model[t]
        dev = features - mean
        inv = np.linalg.inv(cov)
        ll[:, t] = -0.5 * np.einsum("pi,ij,pj->p", dev, inv, dev) - 0.5 * np.log(np.linalg.det(cov)) - np.log(2 * np.pi)
    if fitted:
        cols = ll[:, fitted]
        top = cols.max(1, keepdims=True)
        ll[:, fitted] = cols - (top + np.log(np.exp(cols - top).sum(1, keepdims=True)))
    return ll  # columns of unfitted textures stay 0: a constant, no change to their labels' posteriors


def fit_from_posterior(features, log_posterior, weak_texture, num_proposals, num_textures=len(WEAK_TEXTURES)):
    """The texture model from one E-step's posterior (without the texture term): features
    [B, P, 2] (tensor or array), log_posterior [B, M, P], weak_texture [B, M] (-1: none)."""
    feats, texs, weights = [], [], []
    post = log_posterior.exp().nan_to_num(0.0)
    for b in range(post.shape[0]):
        n = int(num_proposals[b])
        for m in range(post.shape[1]):
            t = int(weak_texture[b, m])
            if t < 0 or n == 0:
                continue
            feats.append(np.asarray(features[b][:n]))
            texs.append(np.full(n, t))
            weights.append(post[b, m, :n].double().numpy())
    if not feats:
        return [None] * num_textures
    return fit(np.concatenate(feats), np.concatenate(texs), np.concatenate(weights), num_textures)


def batch_log_probs(features, model, num_proposals, P, dtype=torch.float32):
    """[B, P, K] tensor of log p(texture | proposal) for a padded batch (0 in padded slots)."""
    out = torch.zeros(len(features), P, len(model), dtype=dtype)
    for b, f in enumerate(features):
        n = int(num_proposals[b])
        if n:
            out[b, :n] = torch.from_numpy(log_probs(np.asarray(f)[:n], model)).to(dtype)
    return out
