"""Clustering metrics (NMI, ARI, Hungarian accuracy) against hand-computed values."""

import math

import numpy as np
import pytest

from avdet.evaluation.clustering import cluster_metrics, hungarian_match


def test_permuted_cluster_ids_score_perfectly():
    labels = np.array([0, 0, 1, 1, 2, 2, 2])
    pred = np.array([2, 2, 0, 0, 1, 1, 1])  # a relabelling of the classes
    metrics = cluster_metrics(pred, labels)
    assert metrics["nmi"] == pytest.approx(1.0)
    assert metrics["ari"] == pytest.approx(1.0)
    assert metrics["accuracy"] == 1.0
    assert metrics["num_clusters_used"] == 3
    assert hungarian_match(pred, labels) == {2: 0, 0: 1, 1: 2}


def test_more_clusters_than_classes_hand_computed():
    pred = np.array([0, 0, 0, 1, 1, 2])
    labels = np.array([0, 0, 1, 1, 1, 1])
    # Contingency [[2, 1], [0, 2], [0, 1]]: best pairs 0->0 and 1->1, cluster 2 left over.
    assert hungarian_match(pred, labels) == {0: 0, 1: 1}
    metrics = cluster_metrics(pred, labels)
    assert metrics["accuracy"] == pytest.approx(4 / 6)
    assert metrics["num_clusters_used"] == 3
    # NMI (arithmetic mean of the entropies), from the definitions in nats.
    h_labels = -(1 / 3 * math.log(1 / 3) + 2 / 3 * math.log(2 / 3))
    h_pred = -(1 / 2 * math.log(1 / 2) + 1 / 3 * math.log(1 / 3) + 1 / 6 * math.log(1 / 6))
    mutual = (
        1 / 3 * math.log(2)
        + 1 / 6 * math.log(1 / 2)
        + 1 / 3 * math.log(1.5)
        + 1 / 6 * math.log(1.5)
    )
    assert metrics["nmi"] == pytest.approx(mutual / ((h_labels + h_pred) / 2))
    # ARI from pair counts: sum C(n_ij, 2) = 2, rows 4, columns 7, C(6, 2) = 15.
    expected_index = 4 * 7 / 15
    assert metrics["ari"] == pytest.approx((2 - expected_index) / ((4 + 7) / 2 - expected_index))


def test_fewer_clusters_than_classes_and_arbitrary_ids():
    labels = np.array([0, 0, 0, 1, 1, 2])
    metrics = cluster_metrics(np.full(6, 5), labels)
    assert metrics["accuracy"] == pytest.approx(3 / 6)
    assert metrics["nmi"] == pytest.approx(0.0)
    assert metrics["num_clusters_used"] == 1
    assert hungarian_match(np.full(6, 5), labels) == {5: 0}
    assert hungarian_match(np.array([10, 10, 7, 7]), np.array([3, 3, 5, 5])) == {10: 3, 7: 5}


def test_bad_input():
    with pytest.raises(ValueError, match="3 cluster ids but 2 labels"):
        cluster_metrics(np.zeros(3, int), np.zeros(2, int))
    with pytest.raises(ValueError, match="no samples"):
        cluster_metrics(np.zeros(0, int), np.zeros(0, int))
