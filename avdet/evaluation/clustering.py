"""Clustering quality of cluster ids against ground-truth classes: NMI, ARI, Hungarian accuracy."""

from __future__ import annotations

import numpy as np
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score
from sklearn.metrics.cluster import contingency_matrix

from avdet.matching.hungarian import max_agreement_assignment


def _check_pair(pred: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    pred, labels = np.asarray(pred).ravel(), np.asarray(labels).ravel()
    if pred.shape != labels.shape:
        raise ValueError(f"{pred.size} cluster ids but {labels.size} labels")
    if pred.size == 0:
        raise ValueError("no samples to evaluate")
    return pred, labels


def _assignment(pred: np.ndarray, labels: np.ndarray):
    """Contingency matrix [K, C] (rows/cols in np.unique order) and its best one-to-one pairs."""
    counts = contingency_matrix(pred, labels)
    return counts, max_agreement_assignment(counts)


def hungarian_match(pred: np.ndarray, labels: np.ndarray) -> dict[int, int]:
    """Cluster id -> label maximising the number of samples matched, one label per cluster.

    Works for any number of clusters K and classes C (min(K, C) pairs; clusters left without a
    label, or only paired with a label they never co-occur with, are absent from the result).
    """
    pred, labels = _check_pair(pred, labels)
    clusters, classes = np.unique(pred), np.unique(labels)
    _, pairs = _assignment(pred, labels)
    return {int(clusters[r]): int(classes[c]) for r, c in pairs}


def cluster_metrics(pred: np.ndarray, labels: np.ndarray) -> dict:
    """NMI, ARI and Hungarian accuracy of [N] cluster ids against [N] class labels (fractions 0..1).

    Accuracy counts a sample as correct when its cluster is matched (``hungarian_match``) to its
    label, so with K > C the samples of the extra clusters count as errors.
    """
    pred, labels = _check_pair(pred, labels)
    counts, pairs = _assignment(pred, labels)
    return {
        "nmi": float(normalized_mutual_info_score(labels, pred)),
        "ari": float(adjusted_rand_score(labels, pred)),
        "accuracy": float(sum(counts[r, c] for r, c in pairs) / pred.size),
        "num_clusters_used": int(np.unique(pred).size),
    }
