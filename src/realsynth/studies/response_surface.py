"""A cheap predictor over the finished trials of a sweep: a quadratic response surface.

The metric is modeled as a full quadratic in the numeric parameters (scaled to [0, 1]; log
parameters in log space): with a real share r and a synthetic weight w that is
``b0 + b1 r + b2 w + b3 r^2 + b4 w^2 + b5 r w``, the smooth shape mixing-law studies fit. A small
ridge keeps it stable near the minimum number of trials. The predicted optimum is the best point
of a dense grid over the box; its uncertainty comes from refitting on trials resampled with
replacement.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from realsynth.studies.sweep_space import Parameter

RIDGE = 1e-3


@dataclass(frozen=True)
class SurfaceFit:
    """The fitted surface and its predicted optimum.

    Attributes:
        parameters: the numeric parameters, in column order.
        coefficients: float64 [m] of :func:`design_matrix`'s columns.
        optimum: the predicted best value of every parameter.
        optimum_interval: per parameter, the 95% bootstrap interval of the optimum's location.
        predicted: the predicted metric at the optimum; ``predicted_interval`` its 95% interval.
        num_trials: trials the fit used.
    """

    parameters: tuple[Parameter, ...]
    coefficients: np.ndarray
    optimum: dict[str, float]
    optimum_interval: dict[str, tuple[float, float]]
    predicted: float
    predicted_interval: tuple[float, float]
    num_trials: int

    def predict(self, values: np.ndarray) -> np.ndarray:
        """The metric at parameter values [n, d] (in the parameters' own units)."""
        return design_matrix(scale(self.parameters, values)) @ self.coefficients

    def to_dict(self) -> dict:
        return {
            "parameters": [p.key for p in self.parameters],
            "coefficients": self.coefficients.tolist(),
            "optimum": self.optimum,
            "optimum_interval": {k: list(v) for k, v in self.optimum_interval.items()},
            "predicted": self.predicted,
            "predicted_interval": list(self.predicted_interval),
            "num_trials": self.num_trials,
        }


def scale(parameters: Sequence[Parameter], values: np.ndarray) -> np.ndarray:
    """Parameter values [n, d] -> [0, 1] per dimension (log-scaled for ``log_float``)."""
    values = np.asarray(values, dtype=np.float64).reshape(-1, len(parameters))
    out = np.empty_like(values)
    for j, p in enumerate(parameters):
        low, high, column = p.low, p.high, values[:, j]
        if p.type == "log_float":
            low, high, column = math.log(low), math.log(high), np.log(column)
        out[:, j] = (column - low) / (high - low) if high > low else 0.0
    return out


def design_matrix(x: np.ndarray) -> np.ndarray:
    """Columns 1, x_i, x_i^2 and x_i x_j (i < j) of scaled points [n, d]."""
    n, d = x.shape
    columns = [np.ones(n), *(x[:, i] for i in range(d)), *(x[:, i] ** 2 for i in range(d))]
    columns += [x[:, i] * x[:, j] for i, j in itertools.combinations(range(d), 2)]
    return np.stack(columns, axis=1)


def _solve(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    a = design_matrix(x)
    return np.linalg.solve(a.T @ a + RIDGE * np.eye(a.shape[1]), a.T @ y)


def _candidates(parameters: Sequence[Parameter]) -> np.ndarray:
    """Points covering the box densely, in the parameters' own units."""
    d = len(parameters)
    per_axis = {1: 201, 2: 61, 3: 21}.get(d, 7)
    axes = []
    for p in parameters:
        grid = np.linspace(0.0, 1.0, per_axis)
        if p.type == "log_float":
            axes.append(np.exp(np.log(p.low) + grid * (math.log(p.high) - math.log(p.low))))
        else:
            axes.append(p.low + grid * (p.high - p.low))
    return np.stack([m.ravel() for m in np.meshgrid(*axes, indexing="ij")], axis=1)


def fit_response_surface(
    parameters: Sequence[Parameter],
    values: np.ndarray,
    scores: np.ndarray,
    *,
    bootstrap: int = 300,
    seed: int = 0,
) -> SurfaceFit | None:
    """Fit the quadratic surface to finished trials and locate its maximum.

    Args:
        parameters: the numeric parameters of the space.
        values: [n, d] every finished trial's parameter values.
        scores: [n] their metric.
        bootstrap: refits on resampled trials for the intervals.
        seed: seed of the resampling.

    Returns:
        The fit, or None with fewer trials than coefficients + 1 (nothing to learn from).
    """
    parameters = tuple(parameters)
    values = np.asarray(values, dtype=np.float64).reshape(-1, len(parameters))
    scores = np.asarray(scores, dtype=np.float64)
    x = scale(parameters, values)
    if len(scores) < design_matrix(x[:1]).shape[1] + 1:
        return None
    coefficients = _solve(x, scores)
    candidates = _candidates(parameters)
    features = design_matrix(scale(parameters, candidates))
    best = int(np.argmax(features @ coefficients))
    rng = np.random.default_rng(seed)
    locations, maxima = [], []
    for _ in range(bootstrap):
        pick = rng.integers(0, len(scores), size=len(scores))
        predicted = features @ _solve(x[pick], scores[pick])
        locations.append(candidates[int(np.argmax(predicted))])
        maxima.append(float(predicted.max()))
    locations = np.array(locations)
    return SurfaceFit(
        parameters=parameters,
        coefficients=coefficients,
        optimum={p.key: float(candidates[best, j]) for j, p in enumerate(parameters)},
        optimum_interval={
            p.key: tuple(float(v) for v in np.percentile(locations[:, j], [2.5, 97.5]))
            for j, p in enumerate(parameters)
        },
        predicted=float(features[best] @ coefficients),
        predicted_interval=tuple(float(v) for v in np.percentile(maxima, [2.5, 97.5])),
        num_trials=len(scores),
    )
