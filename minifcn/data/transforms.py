"""Normalisation, seeded training augmentation, and batching with 255 fill."""

import numpy as np
from PIL import Image

from .voc import IGNORE

MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)  # ImageNet statistics, the usual choice
STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)
CAFFE_MEAN_BGR = np.array([104.00698793, 116.66876762, 122.67891434], dtype=np.float32)
PREPROCESS = ("imagenet", "caffe")


def normalize(image, preprocess="imagenet"):
    """uint8 HxWx3 RGB -> float32 3xHxW, as the weights were trained to see it.

    "imagenet" (torchvision's weights, and minifcn's own): RGB scaled to [0, 1], minus the ImageNet mean,
    over its standard deviation. "caffe" (the FCN authors' Caffe weights, pytorch-fcn's *_from_caffe.pth):
    BGR in 0-255, minus the mean BGR colour of ImageNet, not divided.
    """
    if preprocess == "caffe":
        return (image[..., ::-1].astype(np.float32) - CAFFE_MEAN_BGR).transpose(2, 0, 1)
    if preprocess != "imagenet":
        raise ValueError(f"preprocess must be one of {PREPROCESS}, got {preprocess!r}")
    return ((image.astype(np.float32) / 255 - MEAN) / STD).transpose(2, 0, 1)


def denormalize(x, preprocess="imagenet"):
    """float 3xHxW -> uint8 HxWx3 RGB, for pictures (the inverse of ``normalize``)."""
    if preprocess == "caffe":
        return np.clip(x.transpose(1, 2, 0) + CAFFE_MEAN_BGR, 0, 255)[..., ::-1].astype(np.uint8)
    return np.clip((x.transpose(1, 2, 0) * STD + MEAN) * 255, 0, 255).astype(np.uint8)


def augment(image, label, rng, scale=(0.75, 1.25), crop=None, flip=True):
    """Random scale (bilinear image, nearest label), random crop padded with void, random flip."""
    s = rng.uniform(*scale)
    h, w = label.shape
    size = (max(1, round(w * s)), max(1, round(h * s)))
    image = np.array(Image.fromarray(image).resize(size, Image.BILINEAR))
    label = np.array(Image.fromarray(label).resize(size, Image.NEAREST))
    if crop is not None:
        ph, pw = max(crop - label.shape[0], 0), max(crop - label.shape[1], 0)
        if ph or pw:  # pad with the mean colour (zero after normalize) and void labels
            fill = (MEAN * 255).astype(np.uint8)
            image = np.pad(image, ((0, ph), (0, pw), (0, 0)))
            image[label.shape[0]:, :] = fill
            image[:, label.shape[1]:] = fill
            label = np.pad(label, ((0, ph), (0, pw)), constant_values=IGNORE)
        top = rng.integers(0, label.shape[0] - crop + 1)
        left = rng.integers(0, label.shape[1] - crop + 1)
        image, label = image[top:top + crop, left:left + crop], label[top:top + crop, left:left + crop]
    if flip and rng.random() < 0.5:
        image, label = image[:, ::-1], label[:, ::-1]
    return np.ascontiguousarray(image), np.ascontiguousarray(label)


def collate(samples):
    """Stack (image CxHxW, label HxW) pairs, padding to the largest size: zeros and void labels."""
    H = max(label.shape[0] for _, label in samples)
    W = max(label.shape[1] for _, label in samples)
    x = np.zeros((len(samples), 3, H, W), dtype=np.float32)
    y = np.full((len(samples), H, W), IGNORE, dtype=np.uint8)
    for i, (image, label) in enumerate(samples):
        x[i, :, :label.shape[0], :label.shape[1]] = image
        y[i, :label.shape[0], :label.shape[1]] = label
    return x, y


def batches(dataset, batch_size, order, transform=None, preprocess="imagenet"):
    """Yield (x, y) batches over ``dataset`` in ``order``; ``transform(i, image, label)`` sees the index."""
    for start in range(0, len(order), batch_size):
        samples = []
        for i in order[start:start + batch_size]:
            image, label = dataset[i]
            if transform is not None:
                image, label = transform(i, image, label)
            samples.append((normalize(image, preprocess), label))
        yield collate(samples)
