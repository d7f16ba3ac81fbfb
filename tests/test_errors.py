"""Bad arguments raise ValueError with the offending shape or value in the message."""

import numpy as np
import pytest

from minifcn import ConvMatrix
from minifcn import functional as F

x = np.zeros((1, 3, 5, 5), dtype=np.float32)


@pytest.mark.parametrize("call,message", [
    (lambda: F.conv2d(np.zeros((3, 5, 5)), np.zeros((2, 3, 3, 3))), r"\(3, 5, 5\)"),
    (lambda: F.conv2d(x, np.zeros((2, 4, 3, 3))), r"3 channels.*\(2, 4, 3, 3\)"),
    (lambda: F.conv2d(x, np.zeros((2, 3, 3))), r"\(2, 3, 3\)"),
    (lambda: F.conv2d(x, np.zeros((2, 3, 3, 3)), np.zeros(3)), r"bias of shape \(3,\)"),
    (lambda: F.conv2d(x, np.zeros((2, 3, 7, 7))), r"kernel extent \(7, 7\).*\(5, 5\)"),
    (lambda: F.conv2d(x, np.zeros((2, 3, 3, 3)), dilation=3), r"kernel extent \(7, 7\)"),
    (lambda: F.conv2d(x, np.zeros((2, 3, 3, 3)), stride=0), r"stride \(0, 0\)"),
    (lambda: F.conv_transpose2d(x, np.zeros((4, 2, 3, 3))), r"3 channels.*\(4, 2, 3, 3\)"),
    (lambda: F.conv_transpose2d(x, np.zeros((3, 2, 3, 3)), stride=2, output_padding=2), r"output_padding \(2, 2\)"),
    (lambda: F.max_pool2d(x, 7), r"kernel \(7, 7\).*\(1, 3, 5, 5\)"),
    (lambda: F.max_pool2d(x, 2, padding=2), r"padding \(2, 2\)"),
    (lambda: F.max_pool2d(np.zeros((5, 5)), 2), r"\(5, 5\)"),
    (lambda: F.softmax_cross_entropy(x, np.zeros((1, 5, 5))), r"integer labels.*float64"),
    (lambda: F.softmax_cross_entropy(x, np.zeros((1, 4, 5), dtype=int)), r"target shape \(1, 4, 5\)"),
    (lambda: F.softmax_cross_entropy(x, np.full((1, 5, 5), 3)), r"values \[3\].*\[0, 3\)"),
    (lambda: F.softmax_cross_entropy(x, np.full((1, 5, 5), -1)), r"values \[-1\]"),
    (lambda: F.softmax_cross_entropy(x, np.zeros((1, 5, 5), int), weight=np.ones(4)), r"\(4,\).*3 classes"),
    (lambda: F.softmax_cross_entropy(x, np.zeros((1, 5, 5), int), reduction="max"), r"'max'"),
    (lambda: F.dropout(x, 1.0, True, np.random.default_rng()), r"got 1.0"),
    (lambda: F.crop(x, 2, 0, 4, 5), r"\(2, 0, 4, 5\).*\(5, 5\)"),
    (lambda: F.col2im(np.zeros((1, 27, 10)), (1, 3, 5, 5), 3), r"\(1, 27, 10\).*\(1, 27, 9\)"),
    (lambda: ConvMatrix(np.zeros((2, 3, 3, 3)), (4, 5, 5)), r"\(2, 3, 3, 3\).*\(4, 5, 5\)"),
    (lambda: ConvMatrix(np.zeros((2, 3, 3, 3)), (3, 5, 5)) @ np.zeros(10), r"shape \(10,\)"),
])
def test_bad_arguments_name_the_offender(call, message):
    with pytest.raises(ValueError, match=message):
        call()
