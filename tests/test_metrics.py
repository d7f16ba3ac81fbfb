import numpy as np

from minifcn.metrics import ConfusionMatrix, confusion_matrix, scores


def test_confusion_matrix_ignores_void():
    pred = np.array([[0, 1], [1, 2]])
    target = np.array([[0, 1], [255, 1]])
    assert confusion_matrix(pred, target, 3).tolist() == [[1, 0, 0], [0, 1, 1], [0, 0, 0]]


def test_four_metrics_by_hand():
    # true\pred: class 0 has 3 pixels (2 right), class 1 has 1 pixel (right); one 0 predicted as 1
    hist = np.array([[2, 1], [0, 1]])
    s = scores(hist)
    assert s["pixel_acc"] == 3 / 4
    assert s["mean_acc"] == (2 / 3 + 1) / 2
    iu0, iu1 = 2 / (3 + 2 - 2), 1 / (1 + 2 - 1)
    assert np.isclose(s["mean_iu"], (iu0 + iu1) / 2)
    assert np.isclose(s["fw_iu"], 3 / 4 * iu0 + 1 / 4 * iu1)


def test_absent_class_is_left_out_of_the_means():
    hist = np.array([[5, 0, 0], [0, 5, 0], [0, 0, 0]])
    s = scores(hist)
    assert s["mean_iu"] == 1.0 and s["mean_acc"] == 1.0 and np.isnan(s["class_iu"][2])


def test_accumulates_over_batches():
    cm = ConfusionMatrix(2)
    cm.update(np.array([0, 1]), np.array([0, 0])).update(np.array([1]), np.array([1]))
    assert cm.matrix.tolist() == [[1, 1], [0, 1]]
