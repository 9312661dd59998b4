"""Naming clusters from a handful of labelled boxes: agreement matrix, Hungarian matching, relabel."""

import json

import numpy as np
import pytest

from avdet.matching.hungarian import (
    agreement_matrix,
    box_iou_xywh,
    load_mapping,
    match_clusters,
    relabel_detections,
    save_mapping,
)

CLASS_NAMES = {1: "guitar", 2: "drum", 3: "piano"}
BOXES = [[10, 10, 100, 80], [150, 60, 120, 100]]  # two labelled boxes per image at most


def _labels(image_classes):
    """A COCO labels dict: image i (1-based) holds one box per class in image_classes[i - 1]."""
    images, annotations = [], []
    for image_id, classes in enumerate(image_classes, start=1):
        images.append({"id": image_id, "file_name": f"{image_id}.jpg", "width": 320, "height": 240})
        for box, category in zip(BOXES, classes, strict=False):
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": category,
                    "bbox": box,
                    "iscrowd": 0,
                    "area": box[2] * box[3],
                }
            )
    categories = [{"id": i, "name": n} for i, n in CLASS_NAMES.items()]
    return {"images": images, "annotations": annotations, "categories": categories}


def _det(image_id, cluster, box, score=0.9):
    return {"image_id": image_id, "category_id": cluster, "bbox": box, "score": score}


def _shift(box, dx):
    return [box[0] + dx, box[1], box[2], box[3]]


def test_box_iou_xywh_hand_computed():
    iou = box_iou_xywh(np.array([[0, 0, 100, 100]]), np.array([[25, 0, 100, 100], [200, 0, 5, 5]]))
    np.testing.assert_allclose(iou, [[75 * 100 / (125 * 100), 0.0]])


def test_permuted_clusters_are_recovered():
    labels = _labels([[1], [2], [3], [1, 2], [3, 1]])
    cluster_of = {1: 13, 2: 11, 3: 12}  # the detector's ids are a permutation of the classes
    detections = []
    for ann in labels["annotations"]:
        detections.append(
            _det(ann["image_id"], cluster_of[ann["category_id"]], _shift(ann["bbox"], 5))
        )
    detections.append(_det(1, 11, [300, 200, 10, 10], 0.99))  # a false positive: no vote
    agreement = agreement_matrix(detections, labels)
    assert agreement.cluster_ids == [11, 12, 13] and agreement.class_ids == [1, 2, 3]
    np.testing.assert_allclose(agreement.matrix, 0.9 * np.array([[0, 2, 0], [0, 0, 2], [3, 0, 0]]))
    assert agreement.num_labelled_boxes == 7 and agreement.num_ignored_detections == 0
    mapping = match_clusters(agreement.matrix, agreement.cluster_ids, agreement.class_ids)
    assert mapping == {13: 1, 11: 2, 12: 3}
    relabelled = relabel_detections(detections, mapping)
    assert [d["category_id"] for d in relabelled] == [1, 2, 3, 1, 2, 3, 1, 2]
    assert detections[0]["category_id"] == 13  # the input is left as it was


@pytest.mark.parametrize("votes", ["score", "matched"])
def test_votes_need_iou(votes):
    labels = _labels([[1, 2]])
    big = [10, 10, 260, 150]  # covers both labelled boxes, IoU < 0.5 with each
    loose = _shift(BOXES[0], 60)  # IoU 40 / 160 = 0.25 with the first box
    agreement = agreement_matrix([_det(1, 5, big), _det(1, 6, loose)], labels, votes=votes)
    assert agreement.matrix.sum() == 0


def test_score_votes_collect_the_class_distribution_matched_votes_only_the_top_guess():
    labels = _labels([[1, 2]])
    # the detector's boxes on labelled box 0 (class 1): cluster 6 at 0.8, cluster 5 at 0.6;
    # and one box on labelled box 1 (class 2), nudged so that it overlaps box 1 most
    dets = [_det(1, 5, BOXES[0], 0.6), _det(1, 6, BOXES[0], 0.8), _det(1, 5, BOXES[1], 0.3)]
    score = agreement_matrix(dets, labels)
    assert score.cluster_ids == [5, 6]
    np.testing.assert_allclose(score.matrix, [[0.6, 0.3, 0], [0.8, 0, 0]])
    # matched: the higher score takes box 0, the other finds nothing left; 1 vote per box
    matched = agreement_matrix(dets, labels, votes="matched")
    np.testing.assert_array_equal(matched.matrix, [[0, 1, 0], [1, 0, 0]])
    with pytest.raises(ValueError, match="votes must be one of"):
        agreement_matrix(dets, labels, votes="all")


def test_more_clusters_than_classes_drop_or_unknown():
    matrix = np.array([[4, 0], [0, 3], [1, 2], [0, 0]])  # 4 clusters, 2 classes
    clusters, classes = [0, 1, 2, 3], [7, 9]
    assert match_clusters(matrix, clusters, classes) == {0: 7, 1: 9, 2: None, 3: None}
    mapping = match_clusters(matrix, clusters, classes, keep_unmatched="unknown")
    assert mapping == {0: 7, 1: 9, 2: "unknown", 3: "unknown"}
    detections = [_det(1, c, [0, 0, 10, 10]) for c in clusters]
    assert [d["category_id"] for d in relabel_detections(detections, mapping, 99)] == [7, 9, 99, 99]
    dropped = relabel_detections(detections, match_clusters(matrix, clusters, classes))
    assert [d["category_id"] for d in dropped] == [7, 9]
    with pytest.raises(ValueError, match="unknown_category_id"):
        relabel_detections(detections, mapping)
    with pytest.raises(ValueError, match="cluster 5 is not in the mapping"):
        relabel_detections([_det(1, 5, [0, 0, 10, 10])], mapping)


def test_fewer_clusters_than_classes_and_zero_agreement():
    matrix = np.array([[0, 5, 1], [2, 0, 3]])  # 2 clusters, 3 classes: one class stays unnamed
    assert match_clusters(matrix, [20, 21], [1, 2, 3]) == {20: 2, 21: 3}
    # Cluster 21's only possible class has no votes: it is unmatched, not named.
    assert match_clusters(np.array([[3, 0], [0, 0]]), [20, 21], [1, 2]) == {20: 1, 21: None}
    with pytest.raises(ValueError, match="does not match 2 clusters x 3 classes"):
        match_clusters(np.zeros((3, 3)), [20, 21], [1, 2, 3])
    with pytest.raises(ValueError, match="keep_unmatched"):
        match_clusters(matrix, [20, 21], [1, 2, 3], keep_unmatched="keep")


def test_unlabelled_images_are_ignored_and_counted():
    labels = _labels([[1], [2]])
    detections = [
        _det(1, 0, BOXES[0]),
        _det(2, 1, BOXES[0]),
        _det(7, 1, BOXES[0]),
        _det(8, 2, BOXES[1]),
    ]
    agreement = agreement_matrix(detections, labels)
    assert agreement.num_ignored_detections == 2
    assert agreement.cluster_ids == [0, 1, 2]  # every cluster the detector emits gets a row
    np.testing.assert_allclose(agreement.matrix, [[0.9, 0, 0], [0, 0.9, 0], [0, 0, 0]])
    fixed_rows = agreement_matrix(detections, labels, cluster_ids=[0, 1, 2, 3])
    assert fixed_rows.matrix.shape == (4, 3)
    with pytest.raises(ValueError, match="category 2 not in cluster_ids"):
        agreement_matrix(detections, labels, cluster_ids=[0, 1])


def test_bad_labels():
    with pytest.raises(ValueError, match="labels contain no annotations"):
        agreement_matrix([_det(1, 0, BOXES[0])], {**_labels([[1]]), "annotations": []})
    labels = _labels([[1]])
    labels["annotations"][0]["category_id"] = 8
    with pytest.raises(ValueError, match="category_id 8 that is not in the labels' categories"):
        agreement_matrix([_det(1, 0, BOXES[0])], labels)


def test_save_and_load_mapping(tmp_path):
    labels = _labels([[1], [2], [2]])
    detections = [_det(1, 0, BOXES[0]), _det(2, 1, BOXES[0]), _det(3, 1, BOXES[0])]
    agreement = agreement_matrix(detections, labels, cluster_ids=[0, 1, 2])
    mapping = match_clusters(
        agreement.matrix, agreement.cluster_ids, agreement.class_ids, "unknown"
    )
    path = tmp_path / "mapping.json"
    save_mapping(path, mapping, agreement, CLASS_NAMES, {0: "cluster_0", 1: "cluster_1"})
    record = json.loads(path.read_text())
    assert record["clusters"][1] == {
        "cluster_id": 1,
        "cluster_name": "cluster_1",
        "class_id": 2,
        "class_name": "drum",
        "votes": 1.8,  # two detections of score 0.9
        "total_votes": 1.8,
    }
    assert (
        record["clusters"][2]["class_name"] == "unknown"
        and record["clusters"][2]["cluster_name"] == "2"
    )
    assert record["num_votes"] == pytest.approx(2.7) and record["class_names"] == [
        "guitar",
        "drum",
        "piano",
    ]
    assert load_mapping(path) == mapping
    path.write_text("{}")
    with pytest.raises(ValueError, match="not a cluster mapping"):
        load_mapping(path)
