"""Tiny ImageNet's official layout, built in a fixture (never the real set): classes from wnids.txt in its
order, grey photos as RGB, and every missing or broken file named."""

import numpy as np
import pytest

from minifcn.data import TinyImageNet

from helpers import WNIDS

def test_classes_come_from_wnids_in_its_order_and_labels_follow_them(tiny):
    train = TinyImageNet(tiny.parent, "train")  # the folder holding tiny-imagenet-200 works too
    assert train.classes == WNIDS and train.names == ["n09999999", "goldfish, Carassius auratus", "Egyptian cat"]
    assert len(train) == 6 and [label for _, label in train.samples] == [0, 0, 1, 1, 2, 2]
    for i in range(len(train)):
        image, label = train[i]
        assert image.shape == (64, 64, 3) and image.dtype == np.uint8  # the grey one too
    val = TinyImageNet(tiny, "val")
    assert [val[i][1] for i in range(len(val))] == [2, 0, 1]


def test_a_different_class_count_is_read_not_assumed(tiny):
    (tiny / "wnids.txt").write_text("\n".join(WNIDS[:2]) + "\n")
    assert len(TinyImageNet(tiny, "train").classes) == 2
    with pytest.raises(ValueError, match=r"val_annotations.txt, line 1: expected .*n02124075"):
        TinyImageNet(tiny, "val")  # a val photo of a class wnids.txt does not list


def test_missing_and_broken_files_are_named(tiny, tmp_path):
    with pytest.raises(FileNotFoundError, match="wnids.txt not found"):
        TinyImageNet(tmp_path / "nowhere")
    broken = tiny / "train" / WNIDS[2] / "images" / f"{WNIDS[2]}_1.JPEG"
    broken.write_bytes(b"not a jpeg")
    with pytest.raises(ValueError, match=f"cannot read image {broken}"):
        TinyImageNet(tiny, "train")[5]
    (tiny / "val" / "val_annotations.txt").unlink()
    with pytest.raises(FileNotFoundError, match="val_annotations.txt not found"):
        TinyImageNet(tiny, "val")
    with pytest.raises(ValueError, match="the test split has no labels"):
        TinyImageNet(tiny, "test")
    import shutil
    shutil.rmtree(tiny / "train" / WNIDS[0])
    with pytest.raises(FileNotFoundError, match=f"wnids.txt lists {WNIDS[0]}, which has no training images"):
        TinyImageNet(tiny, "train")
