"""SIFT Flow (Liu et al.): 256x256 scene photographs with 33 semantic classes.

The files on disk number the classes 1-33 and use 0 for void; here, as for VOC,
classes are 0-32 and void is the ignore label 255, so one loss and one metric
serve both datasets. The split lists are the FCN paper's (trainval / test).
"""

import os

import numpy as np
from PIL import Image

from .voc import IGNORE, check_same_size, read_ids, read_image

SIFTFLOW_CLASSES = (
    "awning", "balcony", "bird", "boat", "bridge", "building", "bus", "car", "cow", "crosswalk", "desert",
    "door", "fence", "field", "grass", "moon", "mountain", "person", "plant", "pole", "river", "road", "rock",
    "sand", "sea", "sidewalk", "sign", "sky", "staircase", "streetlight", "sun", "tree", "window")


def read_siftflow_label(path):
    """File values 0 (void) and 1-33 -> IGNORE and 0-32."""
    try:
        with Image.open(path) as im:
            raw = np.array(im)
    except (OSError, ValueError, Image.DecompressionBombError) as err:
        raise ValueError(f"cannot read label map {path}: {err}") from err
    if raw.ndim != 2 or raw.max(initial=0) > len(SIFTFLOW_CLASSES):
        raise ValueError(f"label map {path} must be one channel with values 0-{len(SIFTFLOW_CLASSES)}; "
                         f"got shape {raw.shape}, max {raw.max(initial=0)}")
    return np.where(raw == 0, IGNORE, raw.astype(np.int64) - 1).astype(np.uint8)


class SIFTFlow:
    """Pairs (image uint8 HxWx3, label uint8 HxW) of one split: ``"trainval"`` or ``"test"``.

    ``size``: resize both to size x size (bilinear image, nearest label), for
    quick CPU experiments; None keeps the native 256x256.
    """

    classes = SIFTFLOW_CLASSES

    def __init__(self, root, split="trainval", size=None, subset=None):
        self.root, self.split, self.size = str(root), split, size
        split_file = os.path.join(self.root, f"{split}.txt")
        if not os.path.isdir(self.root):
            raise FileNotFoundError(f"SIFT Flow root {self.root} does not exist")
        if not os.path.isfile(split_file):
            raise FileNotFoundError(f"split list {split_file} not found; splits are 'trainval' and 'test'")
        self.ids = read_ids(split_file)
        if subset is not None:
            self.ids = self.ids[:subset]

    def __len__(self):
        return len(self.ids)

    def image_path(self, image_id):
        return os.path.join(self.root, "images", f"{image_id}.jpg")

    def label_path(self, image_id):
        return os.path.join(self.root, "labels", f"{image_id}.png")

    def label(self, image_id):
        """The class map of one image (0-32, void 255), at ``size`` when one is set."""
        label = read_siftflow_label(self.label_path(image_id))
        if self.size is not None:
            label = np.array(Image.fromarray(label).resize((self.size, self.size), Image.NEAREST))
        return label

    def __getitem__(self, index):
        image_id = self.ids[index]
        image, label = read_image(self.image_path(image_id)), read_siftflow_label(self.label_path(image_id))
        check_same_size(image, label, self.image_path(image_id), self.label_path(image_id))
        if self.size is not None:
            image = np.array(Image.fromarray(image).resize((self.size, self.size), Image.BILINEAR))
            label = np.array(Image.fromarray(label).resize((self.size, self.size), Image.NEAREST))
        return image, label
