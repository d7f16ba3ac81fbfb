"""PASCAL VOC segmentation in its own on-disk layout (VOCdevkit/VOC2012).

    root/JPEGImages/<id>.jpg                  the photo
    root/SegmentationClass/<id>.png           palette PNG: 0 background, 1-20 classes, 255 void
    root/ImageSets/Segmentation/<split>.txt   one id per line

The palette PNG stores class indices; its colour table is only for viewing,
so the indices are read directly (``np.array`` of a mode "P" image).
"""

import io
import os

import numpy as np
from PIL import Image

from ..atomic import write_bytes

VOC_CLASSES = ("background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair",
               "cow", "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
               "train", "tvmonitor")
IGNORE = 255


def voc_colormap(n=256):
    """The VOC colour map: the bits of the class index spread over R, G and B, high bits first."""
    cmap = np.zeros((n, 3), dtype=np.uint8)
    for index in range(n):
        c, r, g, b = index, 0, 0, 0
        for shift in range(7, -1, -1):
            r |= (c & 1) << shift
            g |= ((c >> 1) & 1) << shift
            b |= ((c >> 2) & 1) << shift
            c >>= 3
        cmap[index] = r, g, b
    return cmap


def read_ids(path):
    """The image ids of a split list: one per line, the whole line (an id may hold spaces), blank lines
    skipped, a UTF-8 byte-order mark dropped; a list that is not UTF-8 is an error naming the file and line."""
    with open(path, "rb") as f:
        lines = f.read().splitlines()
    ids = []
    for number, raw in enumerate(lines, start=1):
        try:
            line = raw.decode("utf-8-sig" if number == 1 else "utf-8").strip()
        except UnicodeDecodeError as err:
            raise ValueError(f"split list {path}, line {number}: not UTF-8 text ({err.reason} at byte "
                             f"{err.start}); save the list as UTF-8") from None
        if line:
            ids.append(line)
    return ids


def read_label(path, num_classes=21):
    """uint8 class indices from a palette PNG; values outside [0, K) and 255 are an error naming the file."""
    try:
        with Image.open(path) as im:
            label = np.array(im)
    except (OSError, ValueError, Image.DecompressionBombError) as err:
        raise ValueError(f"cannot read label map {path}: {err}") from err
    if label.ndim != 2:
        raise ValueError(f"label map {path} has shape {label.shape}: expected a single-channel palette PNG")
    bad = (label >= num_classes) & (label != IGNORE)
    if bad.any():
        raise ValueError(f"label map {path} has values {sorted(set(np.unique(label[bad]).tolist()))[:10]} "
                         f"outside 0-{num_classes - 1} and {IGNORE}")
    return label.astype(np.uint8)


def read_image(path, max_pixels=None):
    """uint8 HxWx3 RGB. 16-bit images are scaled to 8 bits (not clipped); float images are refused.

    ``max_pixels``: refuse larger images from their header, before a pixel is decoded. Pillow refuses
    "decompression bombs" (over about 179 million pixels) by itself; both errors name the file."""
    try:
        with Image.open(path) as im:
            if max_pixels is not None and im.size[0] * im.size[1] > max_pixels:
                raise ValueError(f"{im.size[0]}x{im.size[1]} is more than {max_pixels:,} pixels; resize it "
                                 f"first (for example: convert {path} -resize {max_pixels}@ smaller.jpg)")
            if im.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):  # 16-bit grey (PNG): 0-65535 -> 0-255
                grey = np.array(im).astype(np.float64)
                if grey.min(initial=0) < 0 or grey.max(initial=0) > 65535:
                    raise ValueError(f"mode {im.mode} values outside 0-65535")
                return np.repeat(np.round(grey / 257).astype(np.uint8)[..., None], 3, axis=2)
            if im.mode == "F":
                raise ValueError("floating-point pixels; convert it to an 8-bit image first")
            return np.array(im.convert("RGB"))
    except (OSError, ValueError, Image.DecompressionBombError) as err:
        raise ValueError(f"cannot read image {path}: {err}") from err


def verify(dataset, name="dataset"):
    """Open the header of every image and label of ``dataset`` (no pixels are decoded, so it is quick) and
    check the sizes agree; raise naming the first bad files and how many there are. A run checks this
    before its first step, so a broken file stops it at once, not after an epoch of training."""
    if len(dataset) == 0:
        raise ValueError(f"the {name} split is empty ({dataset.split!r} in {dataset.root})")
    bad = []
    for image_id in dataset.ids:
        paths = dataset.image_path(image_id), dataset.label_path(image_id)
        try:
            with Image.open(paths[0]) as image, Image.open(paths[1]) as label:
                if image.size != label.size:
                    bad.append(f"{paths[0]} is {image.size[0]}x{image.size[1]} but {paths[1]} is "
                               f"{label.size[0]}x{label.size[1]}")
        except OSError as err:
            bad.append(f"{err.filename or paths}: {err.strerror or err}")
        except Image.DecompressionBombError as err:
            bad.append(f"{paths[0]}: {err}")
    if bad:
        raise ValueError(f"{len(bad)} of {len(dataset)} {name} images cannot be used: " + "; ".join(bad[:3])
                         + ("; ..." if len(bad) > 3 else ""))


def check_same_size(image, label, image_path, label_path):
    """An image and its label map must cover the same pixels; the error names both files."""
    if image.shape[:2] != label.shape:
        raise ValueError(f"image {image_path} is {image.shape[1]}x{image.shape[0]} but its "
                         f"label {label_path} is {label.shape[1]}x{label.shape[0]}")


def encode(image, **options):
    """A PIL image's file bytes, made in memory: Pillow's writers ignore a short write to a full disk, so
    files are written from these bytes by ``atomic.write_bytes``, which does not."""
    buffer = io.BytesIO()
    image.save(buffer, **options)
    return buffer.getvalue()


def write_label(path, label):
    """Save class indices as a VOC palette PNG (viewable in colour, readable as indices), atomically."""
    label = np.asarray(label)
    if label.size and (label.min() < 0 or label.max() > 255):
        raise ValueError(f"label values {label.min()} ... {label.max()} do not fit an 8-bit palette PNG ({path})")
    im = Image.fromarray(label.astype(np.uint8), mode="P")
    im.putpalette(voc_colormap().ravel().tolist())
    write_bytes(path, encode(im, format="PNG"))


class VOCSegmentation:
    """Pairs (image uint8 HxWx3, label uint8 HxW) of one split of a VOCdevkit tree.

    ``subset``: an int keeps the first N ids; a list of class names or indices
    keeps the ids whose label map contains any of them.
    """

    classes = VOC_CLASSES

    def __init__(self, root, split="train", subset=None):
        self.root = str(root)
        split_file = os.path.join(self.root, "ImageSets", "Segmentation", f"{split}.txt")
        if not os.path.isdir(self.root):
            raise FileNotFoundError(f"VOC root {self.root} does not exist; create one with "
                                    f"'minifcn data download voc2012 --root DIR' or 'minifcn data synth --root DIR'")
        if not os.path.isfile(split_file):
            raise FileNotFoundError(f"split list {split_file} not found (is {self.root} a VOCdevkit/VOC2012 folder?)")
        self.ids = read_ids(split_file)
        self.split = split
        if isinstance(subset, int):
            self.ids = self.ids[:subset]
        elif subset is not None:
            wanted = {self.classes.index(c) if isinstance(c, str) else int(c) for c in subset}
            self.ids = [i for i in self.ids if wanted & set(np.unique(self.label(i)).tolist())]

    def __len__(self):
        return len(self.ids)

    def image_path(self, image_id):
        return os.path.join(self.root, "JPEGImages", f"{image_id}.jpg")

    def label_path(self, image_id):
        return os.path.join(self.root, "SegmentationClass", f"{image_id}.png")

    def label(self, image_id):
        return read_label(self.label_path(image_id), len(self.classes))

    def __getitem__(self, index):
        image_id = self.ids[index]
        image, label = read_image(self.image_path(image_id)), self.label(image_id)
        check_same_size(image, label, self.image_path(image_id), self.label_path(image_id))
        return image, label
