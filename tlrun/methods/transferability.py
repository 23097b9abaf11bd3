"""Transferability scores: how well frozen features (or a source head) should transfer, before training.

- LogME (You, Liu, Wang & Long, "LogME: Practical Assessment of Pre-trained Models for Transfer Learning",
  ICML 2021): for each class k, the one-vs-rest target y_k is modelled as a Bayesian linear regression on
  the features F (n × D): w ~ N(0, α⁻¹I), y_k | F, w ~ N(Fw, β⁻¹I). The evidence p(y_k | F, α, β) is
  maximised over α, β by MacKay's fixed point (the paper's Algorithm 1) and LogME is the maximised log
  evidence divided by n, averaged over classes. Higher = better.
- LEEP (Nguyen, Hassner, Seeger & Archambeau, "LEEP: A New Measure to Evaluate Transferability of Learned
  Representations", ICML 2020): with θ(x) the source classifier's softmax over its Z source labels, the
  empirical joint P(y, z) = mean_i θ_z(x_i)·[y_i = y], the conditional P(y | z) = P(y, z) / P(z), and
  LEEP = mean_i log Σ_z P(y_i | z) θ_z(x_i): the log-likelihood of the "expected empirical predictor".
  Always ≤ 0; higher = better.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class Evidence:
    """The maximised evidence of one regression target."""

    log_evidence_per_sample: float
    alpha: float
    beta: float
    iterations: int


def _max_evidence(eigenvalues: np.ndarray, projected: np.ndarray, target_sq: float, n: int,
                  tol: float = 1e-6, max_iter: int = 1000) -> Evidence:
    """Fixed-point evidence maximisation for one target y.

    ``eigenvalues``: σ_i of FᵀF (length D, zeros allowed); ``projected``: (Vᵀ Fᵀ y)_i, the target seen in
    the eigenbasis V of FᵀF; ``target_sq``: ‖y‖². In that basis (αI + βFᵀF) is diagonal, so every step
    of the paper's loop is O(D):
        m = β (αI + βFᵀF)⁻¹ Fᵀy,  γ = Σ βσ_i / (α + βσ_i),  α ← γ / ‖m‖²,  β ← (n − γ) / ‖Fm − y‖².
    """
    alpha, beta = 1.0, 1.0
    iterations = 0
    for iterations in range(1, max_iter + 1):
        denominator = alpha + beta * eigenvalues
        m = beta * projected / denominator  # m in the eigenbasis (‖m‖ is basis-free)
        gamma = float(np.sum(beta * eigenvalues / denominator))
        m_sq = float(m @ m)
        # ‖Fm − y‖² = ‖y‖² − 2 mᵀFᵀy + mᵀFᵀFm, all in the eigenbasis.
        residual = max(target_sq - 2.0 * float(m @ projected) + float(np.sum(eigenvalues * m * m)), 1e-12)
        new_alpha = gamma / max(m_sq, 1e-12)
        new_beta = (n - gamma) / residual
        converged = abs(new_alpha - alpha) <= tol * alpha and abs(new_beta - beta) <= tol * beta
        alpha, beta = new_alpha, new_beta
        if converged:
            break
    denominator = alpha + beta * eigenvalues
    m = beta * projected / denominator
    m_sq = float(m @ m)
    residual = max(target_sq - 2.0 * float(m @ projected) + float(np.sum(eigenvalues * m * m)), 1e-12)
    dim = len(eigenvalues)
    evidence = (n / 2 * np.log(beta) + dim / 2 * np.log(alpha) - n / 2 * np.log(2 * np.pi)
                - beta / 2 * residual - alpha / 2 * m_sq - 0.5 * float(np.sum(np.log(denominator))))
    return Evidence(float(evidence) / n, alpha, beta, iterations)


def logme_per_class(features: np.ndarray, labels: np.ndarray, num_classes: int | None = None) -> list[Evidence]:
    """The maximised evidence of each class's one-hot column (LogME's per-target step)."""
    features = np.asarray(features, dtype=np.float64)
    labels = np.asarray(labels).astype(np.int64)
    if features.ndim != 2 or len(features) != len(labels):
        raise ValueError(f"expected (n, D) features and n labels, got {features.shape} and {labels.shape}")
    if len(labels) < 2:
        raise ValueError("LogME needs at least 2 samples")
    n = len(features)
    num_classes = num_classes or int(labels.max()) + 1
    # One eigendecomposition of FᵀF (D×D, or the n×n Gram matrix when n < D) serves every class.
    # In the n×n case the D − n directions with σ = 0 are left out: each would add ½·log α to the
    # evidence's D/2·log α term and −½·log α to −½·log|αI + βFᵀF|, so they cancel exactly.
    if n < features.shape[1]:
        eigenvalues, left = np.linalg.eigh(features @ features.T)  # F Fᵀ = U diag(σ) Uᵀ
        eigenvalues = np.clip(eigenvalues, 0.0, None)

        def project(y: np.ndarray) -> np.ndarray:
            # Vᵀ Fᵀ y = diag(√σ) Uᵀ y on the non-zero spectrum; the zero directions contribute nothing.
            return np.sqrt(eigenvalues) * (left.T @ y)
    else:
        eigenvalues, right = np.linalg.eigh(features.T @ features)
        eigenvalues = np.clip(eigenvalues, 0.0, None)
        fty = features.T

        def project(y: np.ndarray) -> np.ndarray:
            return right.T @ (fty @ y)
    results = []
    for k in range(num_classes):
        y = (labels == k).astype(np.float64)
        results.append(_max_evidence(eigenvalues, project(y), float(y @ y), n))
    return results


def logme(features: np.ndarray, labels: np.ndarray, num_classes: int | None = None) -> float:
    """LogME: maximised log evidence per sample, averaged over the one-hot class targets."""
    return float(np.mean([e.log_evidence_per_sample for e in logme_per_class(features, labels, num_classes)]))


def leep(source_probabilities: np.ndarray, labels: np.ndarray, num_classes: int | None = None) -> float:
    """LEEP from the source model's softmax outputs θ(x_i) (n × Z) and the target labels."""
    theta = np.asarray(source_probabilities, dtype=np.float64)
    labels = np.asarray(labels).astype(np.int64)
    if theta.ndim != 2 or len(theta) != len(labels):
        raise ValueError(f"expected (n, Z) probabilities and n labels, got {theta.shape} and {labels.shape}")
    n = len(labels)
    num_classes = num_classes or int(labels.max()) + 1
    joint = np.zeros((num_classes, theta.shape[1]))
    np.add.at(joint, labels, theta)
    joint /= n  # P(y, z)
    marginal = joint.sum(axis=0, keepdims=True)  # P(z)
    conditional = joint / np.maximum(marginal, 1e-300)  # P(y | z)
    expected = np.einsum("iz,iz->i", theta, conditional[labels])  # Σ_z P(y_i | z) θ_z(x_i)
    return float(np.mean(np.log(np.maximum(expected, 1e-300))))
