"""LogME and LEEP against cases worked out by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.stats import multivariate_normal

from tlrun.methods.transferability import leep, logme, logme_per_class


def _log_marginal(features: np.ndarray, y: np.ndarray, alpha: float, beta: float) -> float:
    """log N(y | 0, β⁻¹I + α⁻¹FFᵀ): the evidence written directly (no fixed point involved)."""
    n = len(y)
    covariance = np.eye(n) / beta + features @ features.T / alpha
    return float(multivariate_normal(np.zeros(n), covariance).logpdf(y))


def test_logme_one_feature_hand_case():
    # F = (1, 1, 0)ᵀ, y = (2, 0, 1). Along u = F/|F| the evidence's covariance is 1/β + |F|²/α, across it
    # 1/β (2 dims). The maximum puts 1/β = (|y|² − (uᵀy)²)/2 = 1.5 and 1/β + 2/α = (uᵀy)² = 2:
    # β = 2/3, α = 4, and log evidence = −1.5·log 2π − ½·log(2·1.5²) − ½·(2/2 + 3/1.5) = −5.008854.
    features = np.array([[1.0], [1.0], [0.0]])
    labels = np.array([1, 0, 1])  # one-hot column of class 1 is (1, 0, 1); class 0's is (0, 1, 0)
    from tlrun.methods.transferability import _max_evidence

    y = np.array([2.0, 0.0, 1.0])
    eigenvalues, basis = np.linalg.eigh(features.T @ features)
    result = _max_evidence(eigenvalues, basis.T @ (features.T @ y), float(y @ y), 3)
    assert result.alpha == pytest.approx(4.0, rel=1e-4)
    assert result.beta == pytest.approx(2 / 3, rel=1e-4)
    expected = -1.5 * math.log(2 * math.pi) - 0.5 * math.log(2 * 1.5 ** 2) - 0.5 * 3.0
    assert expected == pytest.approx(-5.008854, abs=1e-6)
    assert result.log_evidence_per_sample == pytest.approx(expected / 3, abs=1e-6)
    # LogME averages the per-class evidences of the one-hot columns.
    per_class = logme_per_class(features, labels)
    assert logme(features, labels) == pytest.approx(np.mean([e.log_evidence_per_sample for e in per_class]))


@pytest.mark.parametrize("n, dim", [(30, 5), (12, 40)])  # primal (n ≥ D) and dual (n < D) paths
def test_logme_is_the_maximised_marginal_likelihood(n, dim):
    rng = np.random.default_rng(0)
    labels = np.arange(n) % 3
    # Class signal along random directions plus noise: every class has an interior maximum (finite α).
    # At most rank 5, so y is not interpolated when n < D (that would send β to infinity).
    latent = np.eye(3)[labels] * 2 + rng.normal(size=(n, 3))
    features = np.hstack([latent, rng.normal(size=(n, 2))]) @ rng.normal(size=(5, dim))
    for k, evidence in enumerate(logme_per_class(features, labels, 3)):
        y = (labels == k).astype(float)
        best = _log_marginal(features, y, evidence.alpha, evidence.beta)
        assert evidence.iterations < 1000
        assert evidence.log_evidence_per_sample == pytest.approx(best / n, abs=1e-6)
        for factor_a, factor_b in [(1.3, 1.0), (0.7, 1.0), (1.0, 1.3), (1.0, 0.7)]:  # a maximum
            assert _log_marginal(features, y, evidence.alpha * factor_a, evidence.beta * factor_b) < best


def test_logme_prefers_informative_features_and_ignores_scale():
    rng = np.random.default_rng(1)
    labels = np.repeat(np.arange(4), 25)
    informative = np.eye(4)[labels] * 3 + rng.normal(size=(100, 4)) * 0.5
    noise = rng.normal(size=(100, 4))
    assert logme(informative, labels) > logme(noise, labels) + 0.5
    assert logme(informative * 1e-6, labels) == pytest.approx(logme(informative, labels), abs=1e-6)


def test_leep_hand_cases():
    # θ rows (0.8, 0.2), (0.4, 0.6) with labels 0, 1: P(y, z) = [[0.4, 0.1], [0.2, 0.3]], P(z) = (0.6, 0.4),
    # P(y | z) = [[2/3, 1/4], [1/3, 3/4]]; each image's EEP likelihood is 0.8·2/3 + 0.2·1/4 = 0.4·1/3 + 0.6·3/4
    # = 7/12, so LEEP = log(7/12).
    theta = np.array([[0.8, 0.2], [0.4, 0.6]])
    assert leep(theta, np.array([0, 1])) == pytest.approx(math.log(7 / 12))
    # A source head that separates the target classes perfectly: LEEP = log 1 = 0.
    assert leep(np.eye(3), np.array([0, 1, 2])) == pytest.approx(0.0)
    # A uniform head knows nothing: LEEP = mean log of the class priors.
    labels = np.array([0, 0, 0, 1])
    assert leep(np.full((4, 5), 0.2), labels) == pytest.approx((3 * math.log(0.75) + math.log(0.25)) / 4)
