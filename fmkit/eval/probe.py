"""Representation quality of frozen features: a linear probe, a weighted kNN vote and a few-shot linear probe.

The trainer runs both on every process with identical gathered inputs, for the pretrained and for a randomly
initialised backbone, so both are deterministic and take well under a few seconds on a few thousand samples.
"""

from __future__ import annotations

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits

# A few thousand samples in standardised feature space converge well within this many lbfgs steps.
PROBE_MAX_ITER = 1000
# sklearn's default L2 strength, fixed rather than tuned: tuning C on the test split would leak, tuning it by
# cross-validation at every eval is too slow, and a fixed C keeps pretrained and random backbones comparable.
PROBE_C = 1.0
# BLAS threads per call. Every process runs the same evaluation at once, and OpenBLAS threads spinning on
# shared cores made the probe up to 20x slower on 2 cores; one thread also makes results independent of core count.
BLAS_THREADS = 1
# The one kNN definition of fmkit, as in MoCo, lightly and solo-learn: 200 neighbours, votes weighted by
# exp(cosine / 0.1). Numbers from two runs or two methods compare only under the same k and temperature.
KNN_K = 200
KNN_TEMPERATURE = 0.1
# Few-shot: a linear probe fitted on FEW_SHOT_SHOTS labelled images per class, averaged over FEW_SHOT_DRAWS draws
# made with fixed seeds (not the run's), so every run and every evaluation is scored on the same draws.
FEW_SHOT_SHOTS = 10
FEW_SHOT_DRAWS = 5
# Similarity entries held at once by the kNN vote (16 MiB of float32, a few times that with the selection
# masks), whatever the size of the test split.
KNN_CHUNK_ELEMENTS = 1 << 22


def linear_probe_accuracy(
    train_features: np.ndarray,
    train_labels: np.ndarray,
    test_features: np.ndarray,
    test_labels: np.ndarray,
    seed: int = 0,
) -> float:
    """Test accuracy of a multinomial logistic regression fitted on standardised train features.

    lbfgs is deterministic; `seed` reaches sklearn's `random_state` for solvers that are not. Constant
    columns are left unscaled by StandardScaler (std 0 becomes 1), so they add no NaNs.
    """
    _check_split(train_features, train_labels, test_features, test_labels)
    train = np.asarray(train_features, dtype=np.float64)
    scaler = StandardScaler().fit(train)
    classifier = LogisticRegression(C=PROBE_C, solver="lbfgs", max_iter=PROBE_MAX_ITER, random_state=seed)
    with threadpool_limits(limits=BLAS_THREADS, user_api="blas"):
        classifier.fit(scaler.transform(train), train_labels)
        predictions = classifier.predict(scaler.transform(np.asarray(test_features, dtype=np.float64)))
    return float(np.mean(predictions == np.asarray(test_labels)))


def knn_accuracy(
    train_features: np.ndarray,
    train_labels: np.ndarray,
    test_features: np.ndarray,
    test_labels: np.ndarray,
    k: int = KNN_K,
    temperature: float = KNN_TEMPERATURE,
) -> float:
    """Test accuracy of a cosine-similarity kNN vote weighted by exp(similarity / temperature).

    The weighting of Wu et al. 2018 and DINO: close neighbours outvote many far ones. Of neighbours with equal
    similarity the lower train index is taken, and of classes with equal votes the smaller label wins. A `k`
    larger than the train split uses all of it.
    """
    _check_split(train_features, train_labels, test_features, test_labels)
    if k < 1 or temperature <= 0:
        raise ValueError(f"knn_accuracy: expected k >= 1 and temperature > 0, got k={k}, temperature={temperature}")
    classes, train_classes = np.unique(np.asarray(train_labels), return_inverse=True)
    train = _unit_rows(train_features)
    test = _unit_rows(test_features)
    k = min(k, len(train))
    rows = max(1, KNN_CHUNK_ELEMENTS // len(train))
    with threadpool_limits(limits=BLAS_THREADS, user_api="blas"):
        votes = [
            _weighted_vote(test[start : start + rows] @ train.T, train_classes, len(classes), k, temperature)
            for start in range(0, len(test), rows)
        ]
    predictions = classes[np.concatenate(votes)]
    return float(np.mean(predictions == np.asarray(test_labels)))


def few_shot_accuracy(
    train_features: np.ndarray,
    train_labels: np.ndarray,
    test_features: np.ndarray,
    test_labels: np.ndarray,
    shots: int = FEW_SHOT_SHOTS,
    draws: int = FEW_SHOT_DRAWS,
) -> float:
    """Mean test accuracy of linear probes each fitted on `shots` train samples per class, one draw per seed 0, 1, ...

    The label-scarce regime is where pretrained features differ most from random ones. A class with fewer than
    `shots` samples contributes all of them.
    """
    _check_split(train_features, train_labels, test_features, test_labels)
    if shots < 1 or draws < 1:
        raise ValueError(f"few_shot_accuracy: expected shots >= 1 and draws >= 1, got shots={shots}, draws={draws}")
    train_labels = np.asarray(train_labels)
    members = [np.flatnonzero(train_labels == label) for label in np.unique(train_labels)]
    accuracies = []
    for draw in range(draws):
        rng = np.random.default_rng(draw)
        chosen = np.sort(np.concatenate([rng.permutation(indices)[:shots] for indices in members]))
        accuracies.append(
            linear_probe_accuracy(np.asarray(train_features)[chosen], train_labels[chosen], test_features, test_labels)
        )
    return float(np.mean(accuracies))


def _unit_rows(features: np.ndarray) -> np.ndarray:
    """L2-normalised rows in float32; an all-zero row stays zero (similarity 0 to everything) instead of NaN."""
    features = np.asarray(features, dtype=np.float32)
    norms = np.linalg.norm(features, axis=1, keepdims=True)
    return features / np.maximum(norms, np.finfo(np.float32).tiny)


def _weighted_vote(
    similarity: np.ndarray, train_classes: np.ndarray, num_classes: int, k: int, temperature: float
) -> np.ndarray:
    """Index of the winning class for each row of a [test, train] similarity block."""
    neighbours = _top_k(similarity, k)
    nearest = np.take_along_axis(similarity, neighbours, axis=1).astype(np.float64)
    # Shifting by each row's best similarity leaves the vote unchanged and keeps exp() finite for any temperature.
    weights = np.exp((nearest - nearest.max(axis=1, keepdims=True)) / temperature)
    slots = np.arange(len(similarity))[:, None] * num_classes + train_classes[neighbours]
    votes = np.bincount(slots.ravel(), weights=weights.ravel(), minlength=len(similarity) * num_classes)
    return votes.reshape(len(similarity), num_classes).argmax(axis=1)


def _top_k(similarity: np.ndarray, k: int) -> np.ndarray:
    """Train indices of the k most similar per row, ties at the k-th similarity going to the lowest indices.

    Only the k-th value is taken from np.partition, whose choice among equal values may differ between CPUs;
    the members are then picked by a rule that does not depend on it.
    """
    kth = np.partition(similarity, -k, axis=1)[:, -k, None]
    above = similarity > kth
    at = similarity == kth
    room = k - above.sum(axis=1, keepdims=True)
    chosen = above | (at & (np.cumsum(at, axis=1, dtype=np.int32) <= room))
    return np.nonzero(chosen)[1].reshape(len(similarity), k)


def _check_split(
    train_features: np.ndarray, train_labels: np.ndarray, test_features: np.ndarray, test_labels: np.ndarray
) -> None:
    """Shapes and values that would otherwise fail deep inside sklearn or numpy, or silently broadcast."""
    for name, features, labels in (
        ("train", train_features, train_labels),
        ("test", test_features, test_labels),
    ):
        if np.ndim(features) != 2 or np.ndim(labels) != 1:
            raise ValueError(
                f"{name}_features must be [samples, dim] and {name}_labels [samples], "
                f"got shapes {np.shape(features)} and {np.shape(labels)}"
            )
        if len(features) != len(labels) or len(features) == 0:
            raise ValueError(
                f"{name}_features has {len(features)} rows but {name}_labels has {len(labels)} labels "
                "(expected the same, non-zero count)"
            )
        if not np.isfinite(features).all():
            raise ValueError(f"{name}_features contains NaN or inf (expected finite features)")
    if np.shape(train_features)[1] != np.shape(test_features)[1]:
        raise ValueError(
            f"train_features has dim {np.shape(train_features)[1]} but test_features has dim "
            f"{np.shape(test_features)[1]} (expected the same)"
        )
