"""Metrics on hand-made cases with exact expected numbers."""
import math

import numpy as np
import pytest

from dlcore.train.metrics import (classification_scores, confusion_matrix, instance_iou, instance_scores,
                                  segmentation_scores, summarise_folds)


def test_confusion_matrix_counts_and_ignores_out_of_range():
    cm = confusion_matrix([0, 0, 1, 1, 2, 5], [0, 1, 1, 1, 0, 0], 3)
    assert cm.tolist() == [[1, 1, 0], [0, 2, 0], [1, 0, 0]]


def test_segmentation_iou_dice_exact():
    truth = np.array([[0, 0, 1, 1],
                      [0, 0, 1, 1]])
    pred = np.array([[0, 1, 1, 1],
                     [0, 0, 0, 1]])
    s = segmentation_scores(truth, pred, ["bg", "fg", "absent"])
    # fg: tp=3, fp=1, fn=1 -> IoU 3/5, Dice 6/8; bg: tp=3, fp=1, fn=1 -> the same
    assert s["iou"]["fg"] == pytest.approx(0.6)
    assert s["dice"]["fg"] == pytest.approx(0.75)
    assert s["iou"]["bg"] == pytest.approx(0.6)
    assert s["iou"]["absent"] is None  # absent from truth and prediction: undefined, not 0 or 1
    assert s["mean_iou"] == pytest.approx(0.6)
    assert s["pixel_accuracy"] == pytest.approx(6 / 8)


def test_segmentation_ignore_index_and_pooling():
    truth = [np.array([1, 1, 255]), np.array([0, 1])]
    pred = [np.array([1, 0, 1]), np.array([0, 1])]
    s = segmentation_scores(truth, pred, ["bg", "fg"], ignore_index=255)
    # pooled: fg tp=2, fn=1, fp=0 -> IoU 2/3; bg tp=1, fp=1 -> 1/2
    assert s["iou"]["fg"] == pytest.approx(2 / 3)
    assert s["iou"]["bg"] == pytest.approx(0.5)


def test_instance_iou_matrix():
    truth = np.zeros((4, 8), int)
    truth[:, :4] = 1          # 16 px
    truth[:, 4:] = 2          # 16 px
    pred = np.zeros((4, 8), int)
    pred[:, :3] = 7           # 12 px inside object 1 -> IoU 12/16
    pred[:2, 4:] = 9          # 8 px inside object 2 -> IoU 8/16
    iou, t_ids, p_ids = instance_iou(truth, pred)
    assert t_ids.tolist() == [1, 2] and p_ids.tolist() == [7, 9]
    assert iou.tolist() == [[0.75, 0.0], [0.0, 0.5]]


def test_instance_scores_exact():
    truth = np.zeros((4, 12), int)
    truth[:, :4] = 1
    truth[:, 4:8] = 2
    truth[:, 8:] = 3          # missed entirely -> FN
    pred = np.zeros((4, 12), int)
    pred[:, :3] = 7           # IoU 0.75 with 1
    pred[:2, 4:8] = 9         # IoU 0.5 with 2
    pred[0, 0] = 0
    pred[3, 11] = 4           # 1-px false positive touching object 3: IoU 1/16
    s = instance_scores(truth, pred)
    # pred 7 now has 11 px inside object 1: IoU 11/16 = 0.6875
    assert s["tp"] == 2 and s["fp"] == 1 and s["fn"] == 1
    assert s["ap"]["0.50"] == pytest.approx(2 / 4)
    assert s["ap"]["0.55"] == pytest.approx(1 / 5)   # only pred 7 matches; pred 9 becomes FP, object 2 FN
    assert s["ap"]["0.70"] == pytest.approx(0.0)
    assert s["f1"] == pytest.approx(4 / 6)
    assert s["precision"] == pytest.approx(2 / 3) and s["recall"] == pytest.approx(2 / 3)
    assert s["mean_matched_iou"] == pytest.approx((0.6875 + 0.5) / 2)
    assert s["mean_ap"] == pytest.approx(np.mean([0.5, 0.2, 0.2, 0.2, 0, 0, 0, 0, 0]))


def test_instance_scores_one_to_one_and_pooled_over_images():
    truth = np.array([[1, 1, 1, 1]])
    pred = np.array([[5, 5, 5, 6]])  # 5 matches (IoU .75); 6 cannot match the same object again
    s = instance_scores([truth, np.zeros((2, 2), int)], [pred, np.zeros((2, 2), int)])
    assert (s["tp"], s["fp"], s["fn"], s["n_true"], s["n_pred"]) == (1, 1, 0, 1, 2)


def test_classification_scores_exact():
    y = [0, 0, 1, 1, 2]
    proba = np.array([[0.9, 0.1, 0.0],
                      [0.4, 0.6, 0.0],
                      [0.2, 0.7, 0.1],
                      [0.1, 0.8, 0.1],
                      [0.3, 0.3, 0.4]])
    s = classification_scores(y, proba, ["a", "b", "c"])
    assert s["accuracy"] == pytest.approx(0.8)
    assert s["balanced_accuracy"] == pytest.approx((0.5 + 1 + 1) / 3)
    assert s["confusion_matrix"] == [[1, 1, 0], [0, 2, 0], [0, 0, 1]]
    # class a: positives scores .9,.4; negatives .2,.1,.3 -> all pairs ranked right -> 1.0
    assert s["roc_auc"]["a"] == pytest.approx(1.0)
    # class b: positives .7,.8; negatives .1,.6,.3 -> 6/6
    assert s["roc_auc"]["b"] == pytest.approx(1.0)
    assert s["roc_auc"]["c"] == pytest.approx(1.0)


def test_classification_auc_partial_and_missing_class():
    y = [0, 1, 0, 1]
    proba = np.array([[0.6, 0.4, 0], [0.7, 0.3, 0], [0.2, 0.8, 0], [0.1, 0.9, 0]])
    s = classification_scores(y, proba, ["a", "b", "c"])
    # class a: positives .6,.2; negatives .7,.1 -> pairs (.6>.7 no, .6>.1 yes, .2>.7 no, .2>.1 yes) = 2/4
    assert s["roc_auc"]["a"] == pytest.approx(0.5)
    assert s["roc_auc"]["c"] is None
    assert s["balanced_accuracy"] == pytest.approx(0.5)  # class c has no support: skipped
    assert s["macro_roc_auc"] == pytest.approx(0.5)


def test_summarise_folds():
    out = summarise_folds([{"x": 1.0}, {"x": 3.0}, {"x": None}], ["x", "y"])
    assert out == {"x": {"mean": 2.0, "sd": pytest.approx(math.sqrt(2)), "n": 2}}
