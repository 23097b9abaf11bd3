"""Label-free model selection for domain adaptation: scores of a checkpoint that need no target labels.

A user adapting to an unlabelled domain cannot pick the epoch by target accuracy. Each epoch the
adaptation pipeline scores the model with these validators (``ft_history.csv`` columns) and
``adaptation.select_by`` picks the checkpoint by one of them; the target accuracy each would have
picked is reported only.

With p_i = softmax(z_i) the predictions of n target samples over C classes and H(p) = −Σ_c p_c log p_c:

- **entropy** (``target_entropy``, lower is better): (1/n) Σ_i H(p_i) — confident target predictions.
- **information maximisation** (``target_im``, higher is better): H((1/n) Σ_i p_i) − (1/n) Σ_i H(p_i),
  confident *and* diverse predictions (Shi & Sha 2012; the objective of SHOT, Liang et al. 2020).
- **SND** (``target_snd``, higher is better; Saito et al. 2021, "Tune it the Right Way"): with f_i =
  p_i / ‖p_i‖ and similarities s_ij = f_i·f_j (j ≠ i), the neighbourhood distribution
  P_ij = exp(s_ij/τ) / Σ_{k≠i} exp(s_ik/τ), τ = 0.05; SND = (1/n) Σ_i H(P_i). Target samples that sit
  in dense neighbourhoods of each other (clusters) give high soft-neighbourhood density.
- **DEV** (``dev_risk``, lower is better; You et al. 2019, "Towards Accurate Model Selection in Deep
  Unsupervised Domain Adaptation"): a domain classifier trained on source-train vs target features
  gives density ratios w_j = (n_s / n_t) · P(target | x_j) / P(source | x_j) on the source validation
  samples; with their losses ℓ_j and L_j = w_j ℓ_j, the control variate η = −Cov(L, w) / Var(w) gives
  DEV = mean(L) + η · mean(w) − η, an importance-weighted estimate of the target risk with lower variance.
"""

from __future__ import annotations

import numpy as np
import torch

SND_TEMPERATURE = 0.05  # Saito et al. 2021

# adaptation.select_by -> (ft_history.csv column, "max" | "min"); "last" keeps the final epoch.
SELECTION = {
    "source_val": ("val_acc", "max"),
    "entropy": ("target_entropy", "min"),
    "im": ("target_im", "max"),
    "snd": ("target_snd", "max"),
    "dev": ("dev_risk", "min"),
    "last": ("epoch", "max"),
}


def _entropy(probabilities: torch.Tensor) -> torch.Tensor:
    return -torch.special.xlogy(probabilities, probabilities).sum(dim=-1)


def mean_entropy(probabilities: torch.Tensor) -> float:
    """(1/n) Σ_i H(p_i) of (n, C) probabilities."""
    return float(_entropy(probabilities).mean())


def information_maximization(probabilities: torch.Tensor) -> float:
    """H(mean p) − mean H(p): high for predictions that are confident and spread over the classes."""
    return float(_entropy(probabilities.mean(dim=0)) - _entropy(probabilities).mean())


def soft_neighborhood_density(probabilities: torch.Tensor, temperature: float = SND_TEMPERATURE) -> float:
    """SND: the mean entropy of each sample's softmax distribution over its similarities to the others."""
    if probabilities.shape[0] < 2:
        return float("nan")
    features = torch.nn.functional.normalize(probabilities.double(), dim=1)
    similarity = features @ features.T / temperature
    similarity.fill_diagonal_(float("-inf"))  # a sample is not its own neighbour
    return float(_entropy(torch.softmax(similarity, dim=1)).mean())


def density_ratios(source_train: np.ndarray, target: np.ndarray, source_val: np.ndarray, seed: int = 0) -> np.ndarray:
    """w(x) = (n_s / n_t) · P(target | x) / P(source | x) at the source validation features, from a logistic
    regression domain classifier on standardised source-train (0) vs target (1) features."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    features = np.concatenate([source_train, target])
    domains = np.concatenate([np.zeros(len(source_train)), np.ones(len(target))])
    classifier = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000, random_state=seed))
    classifier.fit(features, domains)
    target_probability = np.clip(classifier.predict_proba(source_val)[:, 1], 1e-6, 1 - 1e-6)
    return len(source_train) / len(target) * target_probability / (1 - target_probability)


def deep_embedded_validation(losses: np.ndarray, weights: np.ndarray) -> float:
    """DEV = mean(w ℓ) + η mean(w) − η with η = −Cov(w ℓ, w) / Var(w) (You et al. 2019, Algorithm 1)."""
    weighted = weights * losses
    variance = float(np.var(weights, ddof=1)) if len(weights) > 1 else 0.0
    eta = -float(np.cov(weighted, weights, ddof=1)[0, 1]) / variance if variance > 0 else 0.0
    return float(weighted.mean() + eta * weights.mean() - eta)


def pick_epochs(history) -> dict[str, int]:
    """The epoch each validator (present in ``history``) would select."""
    picks = {}
    for name, (column, mode) in SELECTION.items():
        if column in history and history[column].notna().any():
            scores = history[column]
            index = scores.idxmax() if mode == "max" else scores.idxmin()
            picks[name] = int(history.loc[index, "epoch"])
    return picks
