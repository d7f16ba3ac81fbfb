"""Data: PASCAL VOC in its own layout, a synthetic VOC-format set, transforms and batching."""

from .siftflow import SIFTFLOW_CLASSES, SIFTFlow
from .synth import synthesize
from .tinyimagenet import TinyImageNet
from .transforms import augment, batches, collate, denormalize, normalize
from .voc import IGNORE, VOC_CLASSES, VOCSegmentation, read_label, verify, voc_colormap, write_label

__all__ = ["VOCSegmentation", "SIFTFlow", "TinyImageNet", "SIFTFLOW_CLASSES", "VOC_CLASSES", "IGNORE", "voc_colormap", "read_label",
           "write_label", "synthesize", "normalize", "denormalize", "augment", "collate", "batches", "verify"]
