"""VGG-SS localisation metrics against hand-computed values on small masks."""

import itertools
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from avdet.evaluation.localization import (
    boxes_to_mask,
    ciou,
    ciou_ceiling_image,
    evaluate_localization,
    load_vggss_annotations,
    place_on_input,
    pointing_hit,
    resize_heatmap,
    success_auc,
    threshold_heatmap,
)


def test_boxes_to_mask_truncates_clips_and_unions():
    mask = boxes_to_mask([[0.25, 0.5, 0.75, 1.0]], size=4)
    expected = np.zeros((4, 4), dtype=np.uint8)
    expected[2:4, 1:3] = 1
    np.testing.assert_array_equal(mask, expected)
    # int(0.3 * 4) = 1, int(0.6 * 4) = 2: a single pixel (end-exclusive).
    assert boxes_to_mask([[0.3, 0.3, 0.6, 0.6]], size=4).sum() == 1
    # Out-of-range coordinates are clipped to the image.
    assert boxes_to_mask([[-0.5, 0.0, 1.5, 0.5]], size=4).sum() == 8
    # Two overlapping boxes: 4 + 4 pixels sharing 1.
    assert boxes_to_mask([[0, 0, 0.5, 0.5], [0.25, 0.25, 0.75, 0.75]], size=4).sum() == 7


def test_ciou_hand_computed():
    gt = np.zeros((4, 4))
    gt[0:2, 0:2] = 1  # 4 GT pixels
    pred = np.zeros((4, 4))
    pred[0, 0:2] = pred[1, 0] = 1  # 3 inside
    pred[3, 2:4] = 1  # 2 outside
    assert ciou(pred, gt) == pytest.approx(3 / (4 + 2))
    assert ciou(gt, gt) == 1.0
    assert ciou(np.ones((4, 4)), gt) == pytest.approx(4 / 16)
    assert ciou(pred, np.zeros((4, 4))) == 0.0
    with pytest.raises(ValueError, match="shapes differ"):
        ciou(np.zeros((4, 4)), np.zeros((3, 3)))


def test_resize_matches_torch_align_corners():
    rng = np.random.default_rng(0)
    for h, w in [(7, 7), (14, 9), (1, 5)]:
        heatmap = rng.normal(size=(h, w))
        expected = F.interpolate(
            torch.from_numpy(heatmap)[None, None],
            size=(224, 224),
            mode="bilinear",
            align_corners=True,
        )[0, 0].numpy()
        np.testing.assert_allclose(resize_heatmap(heatmap, 224), expected, atol=1e-10)
    with pytest.raises(ValueError, match="NaN"):
        resize_heatmap(np.array([[0.0, np.nan]]), 4)


def test_median_threshold_keeps_half_and_ties_keep_more():
    heatmap = np.arange(16, dtype=float).reshape(4, 4)
    pred = threshold_heatmap(heatmap, "median", size=4)
    assert pred.sum() == 8 and pred[2:].all()  # values 8..15
    # Threshold sort(v)[8] = 7 is shared by three pixels: all of them are kept (>=).
    tied = np.array([0, 1, 2, 3, 4, 5, 6, 7, 7, 7, 10, 11, 12, 13, 14, 15], dtype=float)
    assert threshold_heatmap(tied.reshape(4, 4), "median", size=4).sum() == 9
    # Odd pixel count: size 3 keeps 9 - 9 // 2 = 5 pixels.
    assert threshold_heatmap(np.arange(9.0).reshape(3, 3), "median", size=3).sum() == 5
    # A constant map is kept whole, as in the reference code.
    assert threshold_heatmap(np.ones((4, 4)), "median", size=4).sum() == 16


def test_fixed_and_adaptive_thresholds():
    heatmap = np.arange(16, dtype=float).reshape(4, 4)  # min-max: v / 15
    assert threshold_heatmap(heatmap, "fixed", size=4, fixed_value=0.5).sum() == 8  # 8/15 .. 1
    assert threshold_heatmap(heatmap, "fixed", size=4, fixed_value=0.25).sum() == 12  # 4/15 .. 1
    gt = np.zeros((4, 4))
    gt[0, 0:3] = 1
    pred = threshold_heatmap(heatmap, "adaptive", size=4, gt_mask=gt)
    assert pred.sum() == 3 and pred[3, 1:].all()  # the three highest values 13, 14, 15
    with pytest.raises(ValueError, match="needs gt_mask"):
        threshold_heatmap(heatmap, "adaptive", size=4)
    with pytest.raises(ValueError, match="unknown threshold mode"):
        threshold_heatmap(heatmap, "mean", size=4)
    with pytest.raises(ValueError, match="fixed threshold"):
        threshold_heatmap(heatmap, "fixed", size=4, fixed_value=0.0)


def test_ceiling_hand_computed():
    def gt_with(count, size=4):
        gt = np.zeros(size * size)
        gt[:count] = 1
        return gt.reshape(size, size)

    # median, N = 16: at least 8 pixels are kept.
    assert ciou_ceiling_image(gt_with(2), "median") == pytest.approx(2 / 8)
    assert ciou_ceiling_image(gt_with(4), "median") == pytest.approx(0.5)  # a quarter: exactly 0.5
    assert ciou_ceiling_image(gt_with(10), "median") == 1.0
    # median, N = 9: at least 5 pixels are kept.
    assert ciou_ceiling_image(gt_with(2, size=3), "median") == pytest.approx(2 / 5)
    assert ciou_ceiling_image(gt_with(2), "adaptive") == 1.0
    assert ciou_ceiling_image(gt_with(2), "fixed") == 1.0
    assert ciou_ceiling_image(gt_with(16), "fixed") == pytest.approx(15 / 16)
    assert ciou_ceiling_image(gt_with(0), "median") == 0.0


@pytest.mark.parametrize("mode", ["median", "fixed", "adaptive"])
def test_ceiling_equals_brute_force_over_binary_heatmaps(mode):
    """On a 3x3 image every reachable prediction comes from some 0/1 heatmap: try all 512."""
    rng = np.random.default_rng(1)
    for gt_count in (1, 2, 4, 6, 9):
        gt = np.zeros(9)
        gt[rng.choice(9, gt_count, replace=False)] = 1
        gt = gt.reshape(3, 3)
        best = max(
            ciou(threshold_heatmap(np.array(bits, float).reshape(3, 3), mode, 3, 0.5, gt), gt)
            for bits in itertools.product((0, 1), repeat=9)
        )
        assert ciou_ceiling_image(gt, mode, 0.5) == pytest.approx(best), (mode, gt_count)


@pytest.mark.parametrize("mode", ["median", "fixed", "adaptive"])
def test_random_heatmaps_never_beat_the_ceiling(mode):
    rng = np.random.default_rng(2)
    gt = boxes_to_mask([[0.1, 0.2, 0.4, 0.6]], size=16)
    ceiling = ciou_ceiling_image(gt, mode)
    for _ in range(50):
        pred = threshold_heatmap(rng.random((5, 5)), mode, size=16, gt_mask=gt)
        assert ciou(pred, gt) <= ceiling + 1e-12


def test_small_box_cannot_reach_half_under_median_but_perfect_map_reaches_ceiling():
    boxes = [[0.0, 0.0, 0.45, 0.45]]  # int(0.45 * 224) = 100: 10,000 of 50,176 pixels (< 1/4)
    gt = boxes_to_mask(boxes)
    ceiling = ciou_ceiling_image(gt, "median")
    assert ceiling == pytest.approx(10_000 / 25_088)
    # The best heatmap: GT pixels highest, then distinct lower values elsewhere.
    perfect = gt * 2.0 + np.random.default_rng(3).random(gt.shape)
    assert ciou(threshold_heatmap(perfect, "median", gt_mask=gt), gt) == pytest.approx(ceiling)
    result = evaluate_localization([perfect], [boxes])
    assert result["ciou50"] == 0.0 and result["ciou50_ceiling"] == 0.0
    assert result["mean_ciou"] == pytest.approx(ceiling)
    assert result["pointing"] == 1.0  # the pointing game has no size bound
    # Under the adaptive mode the same heatmap is perfect.
    assert evaluate_localization([perfect], [boxes], mode="adaptive")["mean_ciou"] == 1.0


def test_pointing_maps_the_maximum_through_the_resize():
    heatmap = np.zeros((2, 2))
    heatmap[0, 0] = 1.0  # resized: maximum at pixel (0, 0)
    assert pointing_hit(heatmap, [[0.0, 0.0, 0.1, 0.1]])
    assert not pointing_hit(heatmap, [[0.5, 0.5, 1.0, 1.0]])
    assert pointing_hit(heatmap, [[0.5, 0.5, 1.0, 1.0], [0.0, 0.0, 0.05, 0.05]])
    heatmap = np.zeros((2, 2))
    heatmap[1, 1] = 1.0  # resized: maximum at pixel (223, 223)
    assert pointing_hit(heatmap, [[0.9, 0.9, 1.0, 1.0]])


def test_success_auc_hand_computed():
    # Success rate 1 at t=0, 2/3 for t in (0, 0.5], 1/3 for t in (0.5, 1]; trapezoids of width 0.05.
    expected = 0.05 * ((1 + 2 / 3) / 2 + 9 * 2 / 3 + (2 / 3 + 1 / 3) / 2 + 9 / 3)
    assert success_auc([0.0, 0.5, 1.0]) == pytest.approx(expected)
    assert success_auc([1.0, 1.0]) == pytest.approx(1.0)
    assert success_auc([0.0]) == pytest.approx(0.025)


def test_evaluate_localization_hand_computed_and_mode_recorded():
    size = 4
    heatmap_a = np.arange(16, dtype=float).reshape(4, 4)  # keeps rows 2-3 under the median
    heatmap_b = heatmap_a[::-1].copy()  # keeps rows 0-1
    boxes_a = [[0.0, 0.5, 1.0, 1.0]]  # rows 2-3: cIoU 1
    boxes_b = [[0.0, 0.5, 0.5, 1.0]]  # rows 2-3, cols 0-1: cIoU 0 / (4 + 8) = 0
    result = evaluate_localization([heatmap_a, heatmap_b], [boxes_a, boxes_b], size=size)
    assert result["threshold_mode"] == "median" and result["threshold_value"] is None
    assert result["num_images"] == 2 and result["heatmap_size"] == 4
    assert result["ciou50"] == 0.5 and result["mean_ciou"] == 0.5
    assert result["ciou50_ceiling"] == 1.0  # both boxes cover >= a quarter of the image
    assert result["pointing"] == 0.5  # b's maximum (value 15) is at pixel (0, 3), outside its box
    assert result["auc"] == pytest.approx(success_auc([1.0, 0.0]))
    fixed = evaluate_localization([heatmap_a], [boxes_a], mode="fixed", size=size, fixed_value=0.9)
    assert fixed["threshold_mode"] == "fixed" and fixed["threshold_value"] == 0.9
    assert fixed["mean_ciou"] == pytest.approx(2 / 8)  # keeps 14/15 and 15/15 only
    with pytest.raises(ValueError, match="2 heatmaps but 1"):
        evaluate_localization([heatmap_a, heatmap_b], [boxes_a])


def test_pointing_places_a_coarse_map_where_its_cells_look():
    """Cell (1, 1) of a 4x4 map from a 64x64 input (stride 16) looks at pixel (16, 16), a quarter
    of the way in: corner alignment puts its peak at a third (pixel 75 of 224), outside a box
    spanning 0.2-0.3; placed on the input, the peak is at 0.25 (pixel 56), inside."""
    heatmap = np.zeros((4, 4))
    heatmap[1, 1] = 1.0
    boxes = [[0.2, 0.2, 0.3, 0.3]]
    assert evaluate_localization([heatmap], [boxes])["pointing"] == 0.0
    placed_result = evaluate_localization([heatmap], [boxes], frame_size=(64, 64))
    assert placed_result["pointing"] == 1.0 and placed_result["pointing_corner_aligned"] == 0.0
    unplaced = evaluate_localization([heatmap], [boxes])
    assert {k: v for k, v in placed_result.items() if "pointing" not in k} == {
        k: v for k, v in unplaced.items() if "pointing" not in k
    }  # cIoU and AUC follow the protocol either way
    placed = place_on_input(heatmap, (64, 64))
    assert placed.shape == (64, 64) and placed[16, 16] == 1.0 and placed.max() == 1.0
    assert placed[24, 16] == pytest.approx(0.5)  # half-way to cell 2 (pixel 32)
    ramp = np.arange(3.0)[None].repeat(2, 0)  # columns 0, 1, 2 of a 2x3 map from a 20x30 input
    np.testing.assert_allclose(place_on_input(ramp, (20, 30))[5], np.minimum(np.arange(30) / 10, 2))


def test_load_vggss_annotations(tmp_path):
    path = tmp_path / "vggss.json"
    records = [
        {"file": "abc_000030", "class": "dog barking", "bbox": [[0.1, 0.2, 0.5, 0.6]]},
        {
            "file": "xyz_000010",
            "class": "playing violin",
            "bbox": [[0, 0, 1, 1], [0.2, 0.2, 0.3, 0.3]],
        },
    ]
    path.write_text(json.dumps(records))
    annotations = load_vggss_annotations(path)
    assert annotations == {
        "abc_000030": [[0.1, 0.2, 0.5, 0.6]],
        "xyz_000010": [[0.0, 0.0, 1.0, 1.0], [0.2, 0.2, 0.3, 0.3]],
    }
    bad_records = [
        ({"file": "a", "bbox": [[0.1, 0.2, 0.5]]}, "record 0: bbox entry"),
        ({"file": "a", "bbox": [[0.5, 0.2, 0.1, 0.6]]}, r"record 0: bbox \[0.5"),
        ({"file": "a", "bbox": [["x", 0, 1, 1]]}, "not numeric"),
        ({"file": "a", "bbox": []}, r"record 0 \(a\) has no 'bbox'"),
        ({"class": "dog", "bbox": [[0, 0, 1, 1]]}, "record 0 has no string 'file'"),
    ]
    for record, message in bad_records:
        path.write_text(json.dumps([record]))
        with pytest.raises(ValueError, match=message) as info:
            load_vggss_annotations(path)
        assert str(path) in str(info.value)
    path.write_text(json.dumps([records[0], records[0]]))
    with pytest.raises(ValueError, match="listed twice"):
        load_vggss_annotations(path)
    path.write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        load_vggss_annotations(path)
    path.write_text(json.dumps({"file": "a"}))
    with pytest.raises(ValueError, match="expected a JSON list"):
        load_vggss_annotations(path)
