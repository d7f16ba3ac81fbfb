"""Tiny ImageNet (64 x 64 photos of ImageNet classes) in its official layout, for pre-training a classifier.

    tiny-imagenet-200/wnids.txt                        the classes, one WordNet id a line: output order
    tiny-imagenet-200/words.txt                        wnid <TAB> names (covers all of WordNet)
    tiny-imagenet-200/train/<wnid>/images/*.JPEG       the training photos of each class
    tiny-imagenet-200/val/images/*.JPEG                the validation photos
    tiny-imagenet-200/val/val_annotations.txt          file <TAB> wnid <TAB> box

The class list is read from wnids.txt, never assumed: copies in circulation differ (the official one has
200 classes, a widely mirrored one 202). Grey photos come back as RGB.
"""

import os

from .voc import read_ids, read_image

SPLITS = ("train", "val")


class TinyImageNet:
    """Pairs (image uint8 64x64x3, class index) of the ``train`` or ``val`` split.

    ``root``: the ``tiny-imagenet-200`` folder, or a folder holding it. ``classes``: the wnids in output
    order; ``names``: their words (from words.txt, where present).
    """

    def __init__(self, root, split="train"):
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS} (the test split has no labels), got {split!r}")
        root = str(root)
        if not os.path.isfile(os.path.join(root, "wnids.txt")) and \
                os.path.isfile(os.path.join(root, "tiny-imagenet-200", "wnids.txt")):
            root = os.path.join(root, "tiny-imagenet-200")
        wnids = os.path.join(root, "wnids.txt")
        if not os.path.isfile(wnids):
            raise FileNotFoundError(f"{wnids} not found: is {root} Tiny ImageNet's tiny-imagenet-200 folder?")
        self.root, self.split, self.classes = root, split, read_ids(wnids)
        if not self.classes or len(set(self.classes)) != len(self.classes):
            raise ValueError(f"{wnids} must list each class once; it lists {len(self.classes)} lines, "
                             f"{len(set(self.classes))} distinct")
        index = {wnid: k for k, wnid in enumerate(self.classes)}
        self.names = self._names(os.path.join(root, "words.txt"))
        self.samples = self._train(index) if split == "train" else self._val(index)

    def _names(self, path):
        if not os.path.isfile(path):
            return list(self.classes)
        words = {}
        for line in read_ids(path):
            wnid, _, name = line.partition("\t")
            words[wnid] = name.strip()
        return [words.get(wnid, wnid) for wnid in self.classes]

    def _train(self, index):
        samples = []
        for wnid, k in index.items():
            folder = os.path.join(self.root, "train", wnid, "images")
            if not os.path.isdir(folder):
                raise FileNotFoundError(f"{folder} not found: wnids.txt lists {wnid}, which has no training images")
            samples += [(os.path.join(folder, f), k) for f in sorted(os.listdir(folder))
                        if f.lower().endswith((".jpeg", ".jpg", ".png"))]
        return samples

    def _val(self, index):
        path = os.path.join(self.root, "val", "val_annotations.txt")
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{path} not found: the validation labels")
        samples = []
        for number, line in enumerate(read_ids(path), start=1):
            fields = line.split("\t")
            if len(fields) < 2 or fields[1] not in index:
                raise ValueError(f"{path}, line {number}: expected 'file<TAB>wnid...' with a wnid of wnids.txt, "
                                 f"got {line[:80]!r}")
            samples.append((os.path.join(self.root, "val", "images", fields[0]), index[fields[1]]))
        return samples

    def __len__(self):
        return len(self.samples)

    def __getitem__(self, i):
        path, label = self.samples[i]
        return read_image(path), label  # read_image names a missing or corrupt file, and makes grey RGB
