import os
import shutil

import numpy as np
import pytest
from PIL import Image

from minifcn.data import (VOCSegmentation, augment, collate, read_label, synthesize, voc_colormap,
                          write_label)
from minifcn.data.synth import void_border

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REAL_MASKS = os.environ.get("MINIFCN_VOC_MASKS", os.path.join(REPO, "..", "shared", "data", "voc2012-masks"))
needs_real_masks = pytest.mark.skipif(not os.path.isdir(REAL_MASKS),
                                      reason=f"real VOC2012 masks not found at {REAL_MASKS} (set MINIFCN_VOC_MASKS)")


def make_voc(root, labels, split="train"):
    """A VOCdevkit tree with the given label maps and random JPEGs of the same size."""
    for sub in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        os.makedirs(os.path.join(root, sub), exist_ok=True)
    rng = np.random.default_rng(0)
    for name, label in labels.items():
        image = rng.integers(0, 255, label.shape + (3,), dtype=np.uint8)
        Image.fromarray(image).save(os.path.join(root, "JPEGImages", f"{name}.jpg"))
        write_label(os.path.join(root, "SegmentationClass", f"{name}.png"), label)
    with open(os.path.join(root, "ImageSets", "Segmentation", f"{split}.txt"), "w") as f:
        f.write("\n".join(labels) + "\n")
    return root


def test_colormap_matches_known_voc_colours():
    cmap = voc_colormap()
    assert cmap[1].tolist() == [128, 0, 0] and cmap[15].tolist() == [192, 128, 128] and cmap[255].tolist() == [224, 224, 192]


def test_reader_round_trips_palette_labels_and_void(tmp_path):
    label = np.zeros((7, 9), np.uint8)
    label[2:5, 3:6], label[1, :] = 15, 255
    root = make_voc(str(tmp_path), {"a": label})
    image, read = VOCSegmentation(root)[0]
    assert image.shape == (7, 9, 3) and read.dtype == np.uint8
    assert np.array_equal(read, label)  # 255 stays void, not background


def test_subset_by_count_and_by_class(tmp_path):
    labels = {f"id{i}": np.full((4, 4), c, np.uint8) for i, c in enumerate([0, 15, 2, 15])}
    root = make_voc(str(tmp_path), labels)
    assert VOCSegmentation(root, subset=2).ids == ["id0", "id1"]
    assert VOCSegmentation(root, subset=["person"]).ids == ["id1", "id3"]


def test_errors_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="minifcn data download voc2012"):
        VOCSegmentation(str(tmp_path / "missing"))
    bad = np.zeros((4, 4), np.uint8)
    bad[0, 0] = 30
    root = make_voc(str(tmp_path / "v"), {"bad": bad})
    with pytest.raises(ValueError, match=r"bad\.png has values \[30\]"):
        VOCSegmentation(root)[0]
    write_label(os.path.join(root, "SegmentationClass", "bad.png"), np.zeros((5, 4), np.uint8))
    with pytest.raises(ValueError, match=r"bad\.jpg is 4x4 but its label .*bad\.png is 4x5"):
        VOCSegmentation(root)[0]
    with open(os.path.join(root, "JPEGImages", "bad.jpg"), "wb") as f:
        f.write(b"not a jpeg")
    with pytest.raises(ValueError, match=r"cannot read image .*bad\.jpg"):
        VOCSegmentation(root)[0]


@needs_real_masks
def test_real_voc_masks_read_with_void_borders_and_odd_sizes(tmp_path):
    with open(os.path.join(REAL_MASKS, "ImageSets", "Segmentation", "val.txt")) as f:
        ids = [line.strip() for line in f][:5]
    labels = {i: read_label(os.path.join(REAL_MASKS, "SegmentationClass", f"{i}.png")) for i in ids}
    root = make_voc(str(tmp_path), labels, split="val")
    ds = VOCSegmentation(root, "val")
    for k, image_id in enumerate(ids):
        image, label = ds[k]
        assert image.shape[:2] == label.shape and max(label.shape) == 500
        assert (label == 255).any() and set(np.unique(label)) <= set(range(21)) | {255}


def test_synthetic_set_is_deterministic_and_voc_shaped(tmp_path):
    a, b = synthesize(str(tmp_path / "a"), 3, 2, 48, progress=False), synthesize(str(tmp_path / "b"), 3, 2, 48, progress=False)
    da, db = VOCSegmentation(a, "train"), VOCSegmentation(b, "val")
    assert len(da) == 3 and len(db) == 2
    assert np.array_equal(da[1][0], VOCSegmentation(b, "train")[1][0])
    labels = np.concatenate([da[i][1].ravel() for i in range(3)])
    assert (labels == 255).any() and (labels == 0).any() and len(set(labels.tolist()) - {0, 255}) >= 1


@needs_real_masks
def test_synthetic_set_paints_real_layouts(tmp_path):
    layouts = tmp_path / "layouts"
    layouts.mkdir()
    for name in sorted(os.listdir(os.path.join(REAL_MASKS, "SegmentationClass")))[:3]:
        shutil.copy(os.path.join(REAL_MASKS, "SegmentationClass", name), layouts)
    root = synthesize(str(tmp_path / "out"), 2, 1, 64, layouts=str(layouts), progress=False)
    image, label = VOCSegmentation(root, "train")[0]
    assert max(label.shape) == 64 and image.shape[:2] == label.shape and (label == 255).any()


def test_void_border_keeps_thin_parts():
    label = np.zeros((9, 9), np.uint8)
    label[:, 4] = 15  # a one-pixel-wide leg
    out = void_border(label)
    assert (out[:, 4] == 15).all() and (out[:, 3] == 255).all() and (out[:, 0] == 0).all()


def test_augment_is_seeded_and_pads_with_void():
    rng = np.random.default_rng
    image, label = np.zeros((20, 30, 3), np.uint8), np.ones((20, 30), np.uint8)
    a = augment(image, label, rng(5), crop=40)
    b = augment(image, label, rng(5), crop=40)
    assert a[0].shape == (40, 40, 3) and np.array_equal(a[1], b[1]) and (a[1] == 255).any()


def test_collate_pads_labels_with_void():
    x, y = collate([(np.ones((3, 2, 3), np.float32), np.ones((2, 3), np.uint8)),
                    (np.ones((3, 4, 2), np.float32), np.ones((4, 2), np.uint8))])
    assert x.shape == (2, 3, 4, 3) and y[0, 3, 0] == 255 and y[1, 0, 2] == 255 and x[0, 0, 3, 0] == 0
