"""Statistics of the gap between two domains: label distributions and appearance.

- :func:`js_divergence`: Jensen-Shannon divergence of two count vectors, base 2 (0 = the same
  distribution, 1 = disjoint supports).
- :func:`domain_classifier_auc`: how well a logistic regression tells two sets of feature vectors
  apart, as the ROC AUC of out-of-fold predictions (k-fold cross-validation; identical vectors
  share a fold) with a bootstrap 95% interval over the images: 0.5 means the domains are
  indistinguishable in these features, 1.0 perfectly separable.
- :func:`frechet_distance`: ``|mu_a - mu_b|^2 + Tr(S_a + S_b - 2 (S_a S_b)^(1/2))`` between
  Gaussians fitted to the two sets (the FID formula, on whatever features are given).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from scipy import linalg
from scipy.spatial import distance

__all__ = ["domain_classifier_auc", "frechet_distance", "js_divergence", "roc_auc"]


def js_divergence(p: Sequence[float], q: Sequence[float]) -> float:
    """Jensen-Shannon divergence (base 2) of two non-negative count vectors of one length.

    Raises:
        ValueError: lengths differ, a count is negative, or a vector sums to 0.
    """
    a, b = np.asarray(p, dtype=np.float64), np.asarray(q, dtype=np.float64)
    if a.shape != b.shape or (a < 0).any() or (b < 0).any() or a.sum() <= 0 or b.sum() <= 0:
        raise ValueError(f"js_divergence needs two count vectors >= 0 of one length, got {p}, {q}")
    # SciPy gives the distance, the square root of the divergence (it normalizes the counts).
    return min(1.0, max(0.0, float(distance.jensenshannon(a, b, base=2.0)) ** 2))


def roc_auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """ROC AUC of ``scores`` for binary ``labels`` (1 positive): the probability that a random
    positive scores above a random negative, ties counting half (Mann-Whitney U)."""
    scores, labels = np.asarray(scores, np.float64), np.asarray(labels).astype(bool)
    positives, negatives = int(labels.sum()), int((~labels).sum())
    if positives == 0 or negatives == 0:
        raise ValueError("roc_auc needs both classes")
    from scipy.stats import rankdata

    ranks = rankdata(scores)
    return float((ranks[labels].sum() - positives * (positives + 1) / 2) / (positives * negatives))


def _fit_logistic(x: torch.Tensor, y: torch.Tensor, l2: float) -> torch.Tensor:
    """Weights [D + 1] of an L2-regularized logistic regression (LBFGS, full batch)."""
    w = torch.zeros(x.shape[1] + 1, dtype=x.dtype, requires_grad=True)
    optimizer = torch.optim.LBFGS([w], max_iter=200, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        logits = x @ w[:-1] + w[-1]
        loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, y)
        loss = loss + l2 * (w[:-1] ** 2).sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    return w.detach()


def domain_classifier_auc(
    a: np.ndarray,
    b: np.ndarray,
    *,
    folds: int = 5,
    l2: float = 1e-3,
    replicates: int = 1000,
    seed: int = 0,
) -> dict[str, float]:
    """Cross-validated ROC AUC of a logistic regression telling ``a`` from ``b``.

    Args:
        a / b: float [Na, D] / [Nb, D] features (e.g. pooled backbone features), each >= folds.
        folds: k of the stratified k-fold split.
        l2: ridge penalty on the standardized features.
        replicates: bootstrap draws of the images for the interval.
        seed: seed of the folds and the bootstrap.

    Returns:
        ``auc``, ``low``, ``high`` (95% percentile interval) and ``folds``.
    """
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if len(a) < folds or len(b) < folds or a.shape[1:] != b.shape[1:]:
        raise ValueError(
            f"domain classifier: need >= {folds} feature vectors of one width per domain, got "
            f"{a.shape} and {b.shape}"
        )
    x = np.concatenate([a, b])
    y = np.concatenate([np.zeros(len(a)), np.ones(len(b))])
    rng = np.random.default_rng([seed, 31])
    fold_of = _folds(x, y, folds, rng)
    scores = np.empty(len(x))
    for k in range(folds):
        train, test = fold_of != k, fold_of == k
        mean, std = x[train].mean(axis=0), x[train].std(axis=0) + 1e-8
        xt = torch.from_numpy((x[train] - mean) / std)
        w = _fit_logistic(xt, torch.from_numpy(y[train]), l2)
        scores[test] = ((x[test] - mean) / std) @ w[:-1].numpy() + float(w[-1])
    auc = roc_auc(scores, y)
    draws = []
    for _ in range(replicates):
        pick = np.concatenate(
            [rng.choice(np.flatnonzero(y == c), size=int((y == c).sum())) for c in (0, 1)]
        )
        draws.append(roc_auc(scores[pick], y[pick]))
    low, high = np.percentile(draws, [2.5, 97.5])
    return {"auc": auc, "low": float(low), "high": float(high), "folds": folds}


def _folds(x: np.ndarray, y: np.ndarray, folds: int, rng: np.random.Generator) -> np.ndarray:
    """Fold of every row: identical rows share a fold (an image in both domains must not be
    trained on under one label and tested under the other), groups dealt round-robin in a
    random order, the groups holding positives first (stratified as far as groups allow)."""
    _, group = np.unique(x, axis=0, return_inverse=True)
    group = group.reshape(-1)
    has_positive = np.zeros(group.max() + 1, dtype=bool)
    has_positive[group[y == 1]] = True
    order = np.concatenate(
        [
            rng.permutation(np.flatnonzero(has_positive)),
            rng.permutation(np.flatnonzero(~has_positive)),
        ]
    )
    fold_of_group = np.empty(len(order), dtype=np.int64)
    fold_of_group[order] = np.arange(len(order)) % folds
    return fold_of_group[group]


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Fréchet distance between Gaussians fitted to feature sets ``a`` [Na, D], ``b`` [Nb, D]."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if len(a) < 2 or len(b) < 2 or a.shape[1:] != b.shape[1:]:
        raise ValueError(
            f"frechet_distance: need >= 2 vectors of one width, got {a.shape}, {b.shape}"
        )
    mu_a, mu_b = a.mean(axis=0), b.mean(axis=0)
    cov_a, cov_b = np.atleast_2d(np.cov(a, rowvar=False)), np.atleast_2d(np.cov(b, rowvar=False))
    root = linalg.sqrtm(cov_a @ cov_b)
    root = root.real  # numerical noise can leave a tiny imaginary part
    value = float(((mu_a - mu_b) ** 2).sum() + np.trace(cov_a + cov_b - 2 * root))
    return max(0.0, value)
