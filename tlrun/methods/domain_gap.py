"""How far apart two domains are in a feature space: MMD and the proxy A-distance.

- MMD: the multi-kernel MMD of DAN between source and target features (the transferability score).
- Proxy A-distance (Ben-David et al. 2007/2010, used in the DANN paper): train a linear classifier to
  tell the domains apart; with its held-out error ε, PAD = 2(1 − 2ε). 0 = indistinguishable, 2 = separable.
"""

from __future__ import annotations

import numpy as np
import torch

from tlrun.methods.mmd import mk_mmd


def feature_mmd(source: np.ndarray, target: np.ndarray, max_samples: int = 1000, seed: int = 0) -> float:
    """Quadratic multi-kernel MMD between (at most ``max_samples`` of) each domain's features."""
    rng = np.random.default_rng(seed)
    source = source[rng.permutation(len(source))[:max_samples]]
    target = target[rng.permutation(len(target))[:max_samples]]
    with torch.no_grad():
        value = mk_mmd(torch.as_tensor(source, dtype=torch.float64), torch.as_tensor(target, dtype=torch.float64))
    return float(value)


def proxy_a_distance(source: np.ndarray, target: np.ndarray, seed: int = 0) -> float:
    """2(1 − 2ε) with ε the test error of a linear domain classifier trained on half of the data."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import train_test_split
    from sklearn.preprocessing import StandardScaler

    count = min(len(source), len(target))
    rng = np.random.default_rng(seed)
    features = np.concatenate([source[rng.permutation(len(source))[:count]],
                               target[rng.permutation(len(target))[:count]]])
    domains = np.concatenate([np.zeros(count), np.ones(count)])
    train_x, test_x, train_y, test_y = train_test_split(features, domains, test_size=0.5, random_state=seed,
                                                        stratify=domains)
    scaler = StandardScaler().fit(train_x)
    classifier = LogisticRegression(C=1.0, max_iter=2000)
    classifier.fit(scaler.transform(train_x), train_y)
    error = 1.0 - classifier.score(scaler.transform(test_x), test_y)
    return float(2.0 * (1.0 - 2.0 * min(error, 0.5)))
