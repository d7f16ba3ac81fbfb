"""A deterministic, VOC-format dataset of procedurally drawn objects.

Each image holds a textured background and a few objects of six VOC classes
(person, bicycle, car, chair, bottle, tvmonitor), drawn from simple parts:
ellipses, boxes, rings and thick line segments, so that thin structures (legs,
wheels, chair frames) exist where the skip architecture matters. Later objects
occlude earlier ones. As in VOC, a void band (255) surrounds every object.

Everything is written in the VOCdevkit layout, so training on it exercises
the same reader as real VOC. With ``layouts``, real VOC label maps give the
shapes and only the appearance is painted.
"""

import colorsys
import os

import numpy as np
from PIL import Image
from tqdm import tqdm

from ..atomic import write_bytes
from .voc import IGNORE, VOC_CLASSES, encode, read_ids, read_label, write_label

MIN_SIZE = 8  # pixels: anything smaller is not an image of objects
MAX_SIZE = 4096  # pixels: drawing holds a few float maps of size^2
SYNTH_CLASSES = ("person", "bicycle", "car", "chair", "bottle", "tvmonitor")

# Appearance per class: base colour, stripe period (px) and stripe angle (rad). Colours overlap on purpose.
_APPEARANCE = {
    0: ((120, 130, 110), 0, 0.0),  # background: a smooth gradient with noise
    2: ((60, 90, 170), 3, 0.3), 5: ((60, 150, 90), 4, 1.2), 7: ((180, 60, 50), 6, 0.0),
    9: ((140, 100, 60), 5, 1.57), 15: ((200, 150, 120), 0, 0.0), 20: ((70, 70, 90), 2, 0.8),
}


def _grid(h, w):
    return np.mgrid[0:h, 0:w].astype(np.float32)


def ellipse(yy, xx, cy, cx, ry, rx):
    return ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1


def box(yy, xx, top, left, bottom, right):
    return (yy >= top) & (yy < bottom) & (xx >= left) & (xx < right)


def ring(yy, xx, cy, cx, r, thickness):
    d = np.hypot(yy - cy, xx - cx)
    return (d <= r) & (d >= r - thickness)


def segment(yy, xx, p, q, thickness):
    """Pixels within thickness/2 of the segment p-q (points as (y, x))."""
    (y0, x0), (y1, x1) = p, q
    dy, dx = y1 - y0, x1 - x0
    t = np.clip(((yy - y0) * dy + (xx - x0) * dx) / max(dy * dy + dx * dx, 1e-6), 0, 1)
    return np.hypot(yy - (y0 + t * dy), xx - (x0 + t * dx)) <= thickness / 2


def draw_object(name, yy, xx, cy, cx, s, rng):
    """A boolean mask of one object of class ``name``, centred at (cy, cx), of size about s."""
    j = lambda: rng.uniform(0.85, 1.15)  # noqa: E731  per-part jitter
    if name == "person":
        legs = [segment(yy, xx, (cy + 0.1 * s, cx + d * 0.1 * s), (cy + 0.5 * s, cx + d * 0.18 * s * j()),
                        0.08 * s) for d in (-1, 1)]
        arms = [segment(yy, xx, (cy - 0.25 * s, cx + d * 0.12 * s), (cy + 0.05 * s * j(), cx + d * 0.3 * s),
                        0.06 * s) for d in (-1, 1)]
        return (ellipse(yy, xx, cy - 0.4 * s, cx, 0.1 * s, 0.09 * s) |
                ellipse(yy, xx, cy - 0.1 * s, cx, 0.22 * s * j(), 0.13 * s) | legs[0] | legs[1] | arms[0] | arms[1])
    if name == "bicycle":
        r = 0.22 * s * j()
        back, front = (cy + 0.15 * s, cx - 0.3 * s), (cy + 0.15 * s, cx + 0.3 * s)
        seat, bar = (cy - 0.2 * s, cx - 0.1 * s), (cy - 0.2 * s, cx + 0.22 * s)
        t = 0.05 * s
        return (ring(yy, xx, *back, r, t) | ring(yy, xx, *front, r, t) | segment(yy, xx, back, seat, t) |
                segment(yy, xx, seat, bar, t) | segment(yy, xx, bar, front, t) | segment(yy, xx, back, (cy + 0.15 * s, cx), t) |
                segment(yy, xx, seat, (cy + 0.15 * s, cx), t))
    if name == "car":
        return (box(yy, xx, cy - 0.1 * s, cx - 0.5 * s, cy + 0.2 * s, cx + 0.5 * s * j()) |
                box(yy, xx, cy - 0.32 * s * j(), cx - 0.25 * s, cy - 0.05 * s, cx + 0.25 * s) |
                ellipse(yy, xx, cy + 0.22 * s, cx - 0.3 * s, 0.12 * s, 0.12 * s) |
                ellipse(yy, xx, cy + 0.22 * s, cx + 0.3 * s, 0.12 * s, 0.12 * s))
    if name == "chair":
        t = 0.06 * s
        legs = [segment(yy, xx, (cy, cx + d * 0.2 * s), (cy + 0.45 * s * j(), cx + d * 0.22 * s), t) for d in (-1, 1)]
        return (box(yy, xx, cy - 0.05 * s, cx - 0.25 * s, cy + 0.05 * s, cx + 0.25 * s) |
                segment(yy, xx, (cy, cx - 0.22 * s), (cy - 0.5 * s * j(), cx - 0.25 * s), t) |
                segment(yy, xx, (cy - 0.45 * s, cx - 0.25 * s), (cy - 0.45 * s, cx + 0.05 * s), t) | legs[0] | legs[1])
    if name == "bottle":
        return (box(yy, xx, cy - 0.1 * s, cx - 0.12 * s, cy + 0.45 * s, cx + 0.12 * s * j()) |
                box(yy, xx, cy - 0.4 * s * j(), cx - 0.05 * s, cy - 0.05 * s, cx + 0.05 * s))
    if name == "tvmonitor":
        return (box(yy, xx, cy - 0.35 * s, cx - 0.45 * s * j(), cy + 0.2 * s, cx + 0.45 * s) |
                box(yy, xx, cy + 0.2 * s, cx - 0.05 * s, cy + 0.35 * s, cx + 0.05 * s) |
                box(yy, xx, cy + 0.32 * s, cx - 0.2 * s, cy + 0.38 * s, cx + 0.2 * s))
    raise ValueError(f"no drawing for class {name!r}; drawable: {SYNTH_CLASSES}")


def void_border(label, width=1):
    """Mark a band of ``width`` px along object outlines as void, as VOC does.

    The band lies on the background side of an object (so thin parts stay
    labelled) and on both sides where two objects meet.
    """
    out = label.copy()
    h, w = label.shape
    edge = np.zeros(label.shape, bool)
    for dy in range(-width, width + 1):
        for dx in range(-width, width + 1):
            shifted = np.full_like(label, 0)
            shifted[max(dy, 0):h + min(dy, 0), max(dx, 0):w + min(dx, 0)] = \
                label[max(-dy, 0):h + min(-dy, 0), max(-dx, 0):w + min(-dx, 0)]
            edge |= (shifted != label) & (shifted != IGNORE) & (label != IGNORE) & ((label == 0) | (shifted != 0))
    out[edge] = IGNORE
    return out


def paint(label, rng):
    """An RGB image whose regions carry their class's texture, with per-instance colour jitter and noise."""
    h, w = label.shape
    yy, xx = _grid(h, w)
    image = np.zeros((h, w, 3), np.float32)
    label = np.where(label == IGNORE, 0, label)  # void (a real mask's border band) looks like background
    for cls in np.unique(label):
        colour, period, angle = _APPEARANCE.get(int(cls), ((128, 128, 128), 3, 0.5))
        colour = np.array(colour, np.float32) + rng.normal(0, 25, 3)
        if period:
            phase = (yy * np.sin(angle) + xx * np.cos(angle)) * (2 * np.pi / period) + rng.uniform(0, 6.3)
            texture = 35 * np.sin(phase)[..., None]
        else:  # smooth gradient
            texture = (yy / h - 0.5)[..., None] * rng.normal(0, 60, 3) + (xx / w - 0.5)[..., None] * rng.normal(0, 60, 3)
        region = label == cls
        image[region] = (colour + texture)[region]
    image += rng.normal(0, 12, image.shape)
    return np.clip(image, 0, 255).astype(np.uint8)


# The "texture" style: every class is a pattern (kind, period px, angle deg); its two colours are drawn
# per instance from one distribution shared by all classes, so a pixel's colour says nothing about its class.
_PATTERNS = [("stripes", p, a) for p in (4, 6, 9) for a in (0, 45, 90, 135)] + \
            [("checker", p, a) for p in (4, 6, 9) for a in (0, 45)] + [("dots", 5, 0), ("dots", 8, 0)]


def pattern(kind, period, angle, yy, xx, phase):
    """A pattern in [0, 1]: stripes, a checkerboard or a dot grid, rotated by ``angle`` degrees."""
    a = np.deg2rad(angle)
    u = (yy * np.sin(a) + xx * np.cos(a)) * (2 * np.pi / period) + phase[0]
    v = (yy * np.cos(a) - xx * np.sin(a)) * (2 * np.pi / period) + phase[1]
    if kind == "stripes":
        return 0.5 + 0.5 * np.sin(u)
    if kind == "checker":
        return (np.sin(u) * np.sin(v) > 0).astype(np.float32)
    if kind == "dots":
        return ((np.cos(u) + np.cos(v)) > 1.0).astype(np.float32)
    raise ValueError(f"unknown pattern kind {kind!r}")


def tint(cls, rng):
    """A colour of class ``cls``'s hue. Ten hues for twenty classes: classes c and c + 10 share one and
    differ only by texture, and the background's blobs take every hue, so colour narrows, never decides."""
    hue = ((cls - 1) % 10 / 10 + rng.normal(0, 0.03)) % 1.0
    return 255 * np.array(colorsys.hsv_to_rgb(hue, rng.uniform(0.6, 1), rng.uniform(0.6, 1)))


def paint_textured(label, rng, tinted=False):
    """Classes told apart by texture, on a cluttered background of smooth random-coloured blobs.

    Colours come from one shared distribution, so a pixelwise classifier is near chance; the
    period, angle and phase jitter per instance, so the net must learn the pattern, not a template.
    ``tinted``: one of the pattern's two colours has the class's hue (shared by two classes and by
    some background blobs), so colour helps a net start learning but only texture and shape decide.
    """
    h, w = label.shape
    yy, xx = _grid(h, w)
    image = np.empty((h, w, 3), np.float32)
    image[:] = rng.uniform(0, 255, 3)
    for _ in range(rng.integers(4, 10)):  # clutter: soft blobs of random colour
        blob = ellipse(yy, xx, rng.uniform(0, h), rng.uniform(0, w), rng.uniform(0.05, 0.3) * h,
                       rng.uniform(0.05, 0.3) * w)
        image[blob] = rng.uniform(0, 255, 3)
    image += (yy / h - 0.5)[..., None] * rng.normal(0, 40, 3)
    label = np.where(label == IGNORE, 0, label)
    for cls in np.unique(label):
        if cls == 0:
            continue
        kind, period, angle = _PATTERNS[(int(cls) - 1) % len(_PATTERNS)]
        p = pattern(kind, period * rng.uniform(0.9, 1.1), angle + rng.uniform(-8, 8), yy, xx,
                    rng.uniform(0, 2 * np.pi, 2))[..., None]
        a, b = tint(int(cls), rng) if tinted else rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
        while np.abs(a - b).sum() < 150:  # the pattern must be visible
            b = rng.uniform(0, 255, 3)
        region = label == cls
        image[region] = (a * (1 - p) + b * p)[region]
    image += rng.normal(0, 10, image.shape)
    return np.clip(image, 0, 255).astype(np.uint8)


PAINTERS = {"plain": paint, "texture": paint_textured,
            "tinted": lambda label, rng: paint_textured(label, rng, tinted=True)}


def synth_label(rng, size):
    h = w = size
    yy, xx = _grid(h, w)
    label = np.zeros((h, w), np.uint8)
    for _ in range(rng.integers(1, 4)):
        name = SYNTH_CLASSES[rng.integers(len(SYNTH_CLASSES))]
        s = rng.uniform(0.35, 0.8) * size
        cy, cx = rng.uniform(0.3, 0.7) * h, rng.uniform(0.25, 0.75) * w
        label[draw_object(name, yy, xx, cy, cx, s, rng)] = VOC_CLASSES.index(name)
    return label


def layout_label(path, size):
    """A real VOC label map, resized (nearest) so that its longer side is ``size``."""
    label = read_label(path)
    h, w = label.shape
    scale = size / max(h, w)
    new = (max(1, round(w * scale)), max(1, round(h * scale)))
    return np.array(Image.fromarray(label).resize(new, Image.NEAREST))


def layout_ids(layouts, n_train, n_val):
    """Train and val ids from a folder of VOC label PNGs: the official split lists when ImageSets/
    sits beside the folder (as in VOCdevkit), else the sorted file names, split in order."""
    lists = os.path.join(os.path.dirname(os.path.abspath(layouts)), "ImageSets", "Segmentation")
    if all(os.path.isfile(os.path.join(lists, f"{s}.txt")) for s in ("train", "val")):
        ids = {}
        for split in ("train", "val"):
            ids[split] = read_ids(os.path.join(lists, f"{split}.txt"))
        train, val = ids["train"][:n_train], ids["val"][:n_val]
    else:
        names = sorted(os.path.splitext(f)[0] for f in os.listdir(layouts) if f.endswith(".png"))
        train, val = names[:n_train], names[n_train:n_train + n_val]
    if len(train) < n_train or len(val) < n_val:
        raise ValueError(f"layouts {layouts} give {len(train)} train and {len(val)} val maps; "
                         f"asked for {n_train} and {n_val}")
    return {"train": train, "val": val}


def synthesize(root, n_train=200, n_val=50, size=96, seed=0, layouts=None, progress=True, style="plain"):
    """Write a VOCdevkit-style tree under ``root``; returns the root.

    ``layouts``: a folder of VOC palette PNGs (and optionally ImageSets/ beside it)
    whose shapes are painted instead of drawn ones. ``style``: "plain" (class
    colours that overlap) or "texture" (classes differ only by texture).
    """
    for name, value, least in (("train", n_train, 1), ("val", n_val, 0), ("size", size, MIN_SIZE)):
        if not (isinstance(value, int) and value >= least):
            raise ValueError(f"{name} must be an integer >= {least}, got {value!r}")  # before anything is written
    if size > MAX_SIZE:
        raise ValueError(f"size must be at most {MAX_SIZE} pixels (an image of {size}^2 would not fit in memory "
                         f"for drawing), got {size}")
    if style not in PAINTERS:
        raise ValueError(f"style must be one of {sorted(PAINTERS)}, got {style!r}")
    for sub in ("JPEGImages", "SegmentationClass", os.path.join("ImageSets", "Segmentation")):
        os.makedirs(os.path.join(root, sub), exist_ok=True)
    painter = PAINTERS[style]
    sources = None if layouts is None else layout_ids(layouts, n_train, n_val)
    splits = {"train": range(n_train), "val": range(n_train, n_train + n_val)}
    for split, indices in splits.items():
        ids = []
        for i in tqdm(indices, desc=f"synth {split}", disable=not progress, leave=False):
            rng = np.random.default_rng([seed, i])
            if sources is None:  # drawn shapes: paint the clean map, then add VOC's void band
                image_id, label = f"synth_{i:05d}", synth_label(rng, size)
                image, label = painter(label, rng), void_border(label)
            else:  # real shapes already carry their void band
                image_id = sources[split][i - indices.start]
                label = layout_label(os.path.join(layouts, f"{image_id}.png"), size)
                image = painter(label, rng)
            write_bytes(os.path.join(root, "JPEGImages", f"{image_id}.jpg"),
                        encode(Image.fromarray(image), format="JPEG", quality=95))
            write_label(os.path.join(root, "SegmentationClass", f"{image_id}.png"), label)
            ids.append(image_id)
        write_bytes(os.path.join(root, "ImageSets", "Segmentation", f"{split}.txt"), ("\n".join(ids) + "\n").encode())
    return root
