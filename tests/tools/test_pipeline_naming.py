"""The pipeline's naming votes from pseudo-boxes: labelled training frames vote with their own box."""

from __future__ import annotations

import numpy as np

from avdet.matching.hungarian import agreement_matrix
from avdet.pipeline import pseudo_detections

PSEUDO = {
    "images": [{"id": 1, "file_name": "a.jpg"}, {"id": 2, "file_name": "b.jpg"}],
    "annotations": [
        {"id": 1, "image_id": 1, "category_id": 3, "bbox": [10, 10, 40, 40], "score": 0.7},
        {"id": 2, "image_id": 2, "category_id": 4, "bbox": [0, 0, 20, 20], "score": 0.6},
    ],
    "categories": [{"id": 3, "name": "cluster_0"}, {"id": 4, "name": "cluster_1"}],
}
LABELS = {  # one labelled image, a.jpg, under another id; c.jpg is no training frame
    "images": [{"id": 9, "file_name": "a.jpg"}, {"id": 10, "file_name": "c.jpg"}],
    "annotations": [
        {"id": 1, "image_id": 9, "category_id": 1, "bbox": [12, 10, 40, 40]},
        {"id": 2, "image_id": 10, "category_id": 2, "bbox": [0, 0, 20, 20]},
    ],
    "categories": [{"id": 1, "name": "drum"}, {"id": 2, "name": "bell"}],
}


def test_labelled_training_frames_vote_with_their_pseudo_box():
    votes = pseudo_detections(PSEUDO, LABELS)
    assert votes == [{"image_id": 9, "category_id": 3, "bbox": [10, 10, 40, 40], "score": 0.7}]
    agreement = agreement_matrix(votes, LABELS, cluster_ids=[3, 4])
    np.testing.assert_allclose(agreement.matrix, [[0.7, 0.0], [0.0, 0.0]])
