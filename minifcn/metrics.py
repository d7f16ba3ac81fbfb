"""The paper's four segmentation metrics, as plain functions of a confusion matrix.

With n_ij the number of pixels of class i predicted as class j, t_i = sum_j n_ij
the pixels of class i, and K the number of classes (FCN paper, section 5):

    pixel accuracy      sum_i n_ii / sum_i t_i
    mean accuracy       (1/K) sum_i n_ii / t_i
    mean IU             (1/K) sum_i n_ii / (t_i + sum_j n_ji - n_ii)
    frequency-weighted  (sum_k t_k)^-1 sum_i t_i n_ii / (t_i + sum_j n_ji - n_ii)

Absent classes: a class with no true pixels has no accuracy (0/0), so mean
accuracy leaves out every absent class; its IU is 0/0 only if it is also never
predicted, so mean IU leaves out the classes neither present nor predicted,
and an absent class that is predicted counts with IU 0 (NaN-means throughout).
"""

import numpy as np


def confusion_matrix(pred, target, num_classes, ignore_index=255):
    """n[i, j] = pixels of true class i predicted as j; ignored pixels are skipped."""
    pred, target = np.asarray(pred).ravel(), np.asarray(target).ravel()
    valid = target != ignore_index
    index = num_classes * target[valid].astype(np.int64) + pred[valid].astype(np.int64)
    return np.bincount(index, minlength=num_classes ** 2).reshape(num_classes, num_classes)


def scores(hist, exclude_absent=False):
    """The four metrics and per-class IU / accuracy from a confusion matrix.

    ``exclude_absent``: leave classes with no true pixels out of the means even
    when they are predicted (the FCN paper's SIFT Flow protocol).
    """
    hist = np.asarray(hist, dtype=np.float64)
    diag, true, predicted = np.diag(hist), hist.sum(axis=1), hist.sum(axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        class_acc = diag / true
        iu = diag / (true + predicted - diag)
    if exclude_absent:
        iu = np.where(true > 0, iu, np.nan)
    freq = true / true.sum()
    present = true > 0
    return {
        "pixel_acc": float(diag.sum() / true.sum()),
        "mean_acc": float(np.nanmean(class_acc)),
        "mean_iu": float(np.nanmean(iu)),
        "fw_iu": float((freq[present] * iu[present]).sum()),
        "class_iu": iu.tolist(),
        "class_acc": class_acc.tolist(),
    }


def boundary_band(label, width, ignore_index=255):
    """Pixels within ``width`` px (chessboard distance) of an object outline.

    An outline is where two neighbouring pixels carry different labels, the
    void band (``ignore_index``) included, so the band hugs every object edge.
    Restricting the metrics to this band measures boundary precision (the
    "trimap" evaluation): coarse FCN-32s blobs lose most there.
    """
    label = np.asarray(label)
    edge = np.zeros(label.shape, bool)
    edge[:, 1:] |= label[:, 1:] != label[:, :-1]
    edge[:, :-1] |= label[:, 1:] != label[:, :-1]
    edge[1:] |= label[1:] != label[:-1]
    edge[:-1] |= label[1:] != label[:-1]
    band, (h, w) = edge.copy(), label.shape
    for dy in range(-width, width + 1):
        for dx in range(-width, width + 1):
            band[max(dy, 0):h + min(dy, 0), max(dx, 0):w + min(dx, 0)] |= \
                edge[max(-dy, 0):h + min(-dy, 0), max(-dx, 0):w + min(-dx, 0)]
    return band & (label != ignore_index)


class ConfusionMatrix:
    """Accumulates a confusion matrix over batches."""

    def __init__(self, num_classes, ignore_index=255):
        self.num_classes, self.ignore_index = num_classes, ignore_index
        self.matrix = np.zeros((num_classes, num_classes), dtype=np.int64)

    def update(self, pred, target):
        self.matrix += confusion_matrix(pred, target, self.num_classes, self.ignore_index)
        return self

    def scores(self, exclude_absent=False):
        return scores(self.matrix, exclude_absent)


def format_scores(result, class_names=None):
    """A short text report: the four numbers, then per-class IU."""
    lines = [f"pixel acc {100 * result['pixel_acc']:.1f}   mean acc {100 * result['mean_acc']:.1f}   "
             f"mean IU {100 * result['mean_iu']:.1f}   f.w. IU {100 * result['fw_iu']:.1f}"]
    if class_names is not None:
        lines.append(f"{'class':>14}  {'IU':>6}  {'acc':>6}")
        for name, iu, acc in zip(class_names, result["class_iu"], result["class_acc"]):
            if not (np.isnan(iu) and np.isnan(acc)):
                lines.append(f"{name:>14}  {100 * iu:6.1f}  {100 * acc:6.1f}")
    return "\n".join(lines)
