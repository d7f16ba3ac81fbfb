"""The paper's starting point, in miniature: a classifier, trained first, becomes FCN-32s's body.

FCNs work because a net that already recognises things is convolutionalized and then fine-tuned to
label every pixel. The paper starts from VGG16 trained on ImageNet; here the classifier is minifcn's
narrow VGG16 (``VGGClassifier``), trained on one of two sources:

- **photos of a classification set** (``dataset="tiny-imagenet"``: ImageNet's own photos at 64 x 64,
  200 classes), with random flips and pad-and-crop shifts. This is the paper's recipe: the features
  come from many photos the segmentation data never shows.
- **crops of the segmentation training images** themselves (``voc``, ``siftflow``): each crop is
  centred on a pixel of a class drawn uniformly from the classes in the image, so that rare classes are
  seen as often as common ones (images are first resized by a random factor drawn from ``scale``; parts
  of a crop that fall outside the image are void); its label is the class that covers most of its
  labelled pixels.

With the "flatten" head fc6 sees the whole (crop/32) x (crop/32) pool5 map, so ``convolutionalize``
turns it into a convolution of that size; with the "average" head it is 1 x 1. The FCN that starts
from it is built with that ``fc6_kernel`` (``minifcn train --init OUT/classifier.npz --fc6-kernel K``;
``checkpoint.initialize`` does the conversion). A checkpoint is written every ``checkpoint_every``
steps and after every epoch, and a run resumes from it exactly.
"""

import contextlib
import json
import os
import time

import numpy as np
from PIL import Image
from tqdm import tqdm

from . import atomic, distributed, interrupts, nn, runlock
from . import functional as F
from .autograd import Tensor, no_grad
from .checkpoint import load_classifier, read_checkpoint, save_checkpoint
from .config import PretrainConfig  # noqa: F401  (the settings of this stage live with the others)
from .data import SIFTFlow, TinyImageNet, VOCSegmentation, normalize
from .data.voc import IGNORE
from .models.vgg import VGGClassifier
from .optim import SGD, Adam


VALIDATION = 10 ** 9  # the seed key of the validation crops (epochs use 0, 1, ...)


def open_split(config, split):
    if config.dataset == "siftflow":
        return SIFTFlow(config.data, split, config.image_size)
    if config.dataset == "tiny-imagenet":
        return TinyImageNet(config.data, split)
    return VOCSegmentation(config.data, split)


def crops_of(image, label, config, rng):
    """``crops_per_image`` (crop, class) pairs from one image (see the module docstring for the rule)."""
    s = rng.uniform(*config.scale)
    if s != 1:
        size = (max(1, round(label.shape[1] * s)), max(1, round(label.shape[0] * s)))
        image = np.array(Image.fromarray(image).resize(size, Image.BILINEAR))
        label = np.array(Image.fromarray(label).resize(size, Image.NEAREST))
    half, out = config.crop // 2, []
    padded_image = np.pad(image, ((half, half), (half, half), (0, 0)))
    padded_label = np.pad(label, half, constant_values=IGNORE)
    present = np.unique(label[label != IGNORE])
    for _ in range(config.crops_per_image if len(present) else 0):
        ys, xs = np.nonzero(label == rng.choice(present))
        k = rng.integers(len(ys))
        y, x = ys[k], xs[k]  # the crop's centre, in padded coordinates y + half - half = y
        window = padded_label[y: y + config.crop, x: x + config.crop]
        counts = np.bincount(window[window != IGNORE].ravel(), minlength=config.num_classes)
        crop = padded_image[y: y + config.crop, x: x + config.crop]
        if rng.random() < 0.5:
            crop = crop[:, ::-1]
        out.append((normalize(np.ascontiguousarray(crop), config.preprocess), int(counts.argmax())))
    return out


def batches_of_crops(dataset, config, order, seed_key):
    """Batches (x, y) of crops from the images in ``order``; each image's crops seeded by (seed_key, index)."""
    pending = []
    for i in order:
        pending += crops_of(*dataset[i], config, np.random.default_rng([*seed_key, int(i)]))
        while len(pending) >= config.batch_size:
            chunk, pending = pending[:config.batch_size], pending[config.batch_size:]
            yield np.stack([c for c, _ in chunk]), np.array([k for _, k in chunk])
    if pending:
        yield np.stack([c for c, _ in pending]), np.array([k for _, k in pending])


class Crops:
    """Batches of class-labelled crops cut from a segmentation split (see the module docstring)."""

    def __init__(self, config, split, progress=False):
        self.config, self.dataset = config, open_split(config, split)
        named = list(getattr(self.dataset, "classes", []))  # crops are named by the label maps' values
        self.classes = named if len(named) == config.num_classes else [str(k) for k in range(config.num_classes)]
        self.steps = -(-len(self.dataset) * config.crops_per_image // config.batch_size)  # an upper bound

    def __len__(self):
        return len(self.dataset)

    def epoch(self, epoch):
        order = np.random.default_rng([self.config.seed, epoch]).permutation(len(self.dataset))
        return batches_of_crops(self.dataset, self.config, order, (self.config.seed, epoch))

    def validation(self):
        return batches_of_crops(self.dataset, self.config, range(len(self.dataset)), (self.config.seed, VALIDATION))


# normalize applied to each of the 256 values a uint8 can take, in each channel: (3, 256)
NORMALIZED = np.ascontiguousarray(normalize(np.repeat(np.arange(256, dtype=np.uint8)[None, :, None], 3, axis=2))[:, 0])


def normalize_batch(images):
    """uint8 (N, H, W, 3) -> float32 (N, 3, H, W), bit for bit as ``normalize`` does one image
    ("imagenet"), by table lookup: 3.6 -> 1.0 ms for a batch of 64 photos of 64 x 64."""
    out = np.empty((len(images), 3) + images.shape[1:3], np.float32)
    for c in range(3):
        np.take(NORMALIZED[c], images[..., c], out=out[:, c])
    return out


def read_photos(dataset, side, progress):
    """Every photo of ``dataset`` as one uint8 array (N, side, side, 3) and its labels: Tiny ImageNet's
    100,000 photos are 1.2 GB, read once (about 20 s) instead of decoding each JPEG every epoch."""
    images, labels = np.empty((len(dataset), side, side, 3), np.uint8), np.empty(len(dataset), np.int64)
    for i in tqdm(range(len(dataset)), desc=f"reading {dataset.split} photos", disable=not progress, leave=False):
        image, labels[i] = dataset[i]
        if image.shape[:2] != (side, side):  # the official photos are all 64 x 64; others are resized
            image = np.asarray(Image.fromarray(image).resize((side, side), Image.BILINEAR))
        images[i] = image
    return images, labels


class Photos:
    """Batches of a classification set's photos (Tiny ImageNet) at ``crop`` x ``crop``: each photo of a
    training batch is flipped with probability 1/2 and shifted by reflect-padding ``pad`` pixels and
    cropping back at a random offset, drawn from (seed, epoch, batch) so that a resumed run sees the same.
    With ``train_crop`` the training crops are that much smaller (a 56-px crop has 3/4 of a 64-px photo's pixels)
    while validation sees whole photos: the average head reads any size."""

    def __init__(self, config, split, progress=False):
        if config.preprocess != "imagenet":
            raise ValueError(f"photos are normalised with the ImageNet statistics; got preprocess "
                             f"{config.preprocess!r}")
        self.config, self.dataset = config, open_split(config, split)
        self.classes, self.names = self.dataset.classes, self.dataset.names
        if len(self.classes) != config.num_classes:
            raise ValueError(f"{self.dataset.root}/wnids.txt lists {len(self.classes)} classes; pass "
                             f"--num-classes {len(self.classes)} (now {config.num_classes})")
        self.images, self.labels = read_photos(self.dataset, config.crop, progress)
        self.steps = -(-len(self.dataset) // config.batch_size)

    def __len__(self):
        return len(self.dataset)

    def epoch(self, epoch):
        c = self.config
        order = np.random.default_rng([c.seed, epoch]).permutation(len(self.images))
        for k in range(self.steps):
            rows = order[k * c.batch_size: (k + 1) * c.batch_size]
            rng = np.random.default_rng([c.seed, epoch, k])
            side = c.train_crop or c.crop
            flips = rng.random(len(rows)) < 0.5
            dy, dx = rng.integers(0, c.crop + 2 * c.pad - side + 1, (2, len(rows)))
            padded = np.pad(self.images[rows], ((0, 0), (c.pad, c.pad), (c.pad, c.pad), (0, 0)), mode="reflect")
            batch = np.stack([p[y: y + side, x: x + side][:, ::-1 if f else 1]
                              for p, y, x, f in zip(padded, dy, dx, flips)])
            yield normalize_batch(batch), self.labels[rows]

    def validation(self, batch_size=250):
        for k in range(0, len(self.images), batch_size):
            yield normalize_batch(self.images[k: k + batch_size]), self.labels[k: k + batch_size]


def source(config, split, progress=False):
    return (Photos if config.dataset == "tiny-imagenet" else Crops)(config, split, progress)


def accuracy(classifier, batches, world=None):
    """(top-1, top-5) accuracy over ``batches`` of (x, labels) in eval mode; under MPI the ranks take turns
    by batch and add up their counts."""
    world = world or distributed.World()
    classifier.eval()
    counts = np.zeros(3, np.int64)  # top-1 right, top-5 right, total
    with no_grad():
        for k, (x, y) in enumerate(batches):
            if world.mine(k):
                scores = classifier(Tensor(x)).numpy()
                top5 = np.argsort(-scores, axis=1)[:, :5]
                counts += int((top5[:, 0] == y).sum()), int((top5 == y[:, None]).any(axis=1).sum()), len(y)
    classifier.train()
    top1, top5, total = (int(c) for c in world.sum(counts))
    return top1 / max(total, 1), top5 / max(total, 1)


def pretrain(config, resume=True, progress=True, log=print, world=None):
    """Train the classifier; returns (classifier, log of epochs). Writes OUT/classifier.npz every
    ``checkpoint_every`` steps and every epoch, one line per epoch to OUT/metrics.jsonl and OUT/curves.png.

    Under ``mpiexec -n N`` the ranks share each batch as ``train`` does (minifcn.distributed). With
    batch normalisation each rank normalises by its own rows' statistics (as PyTorch's DDP does without
    SyncBatchNorm), so N ranks train a slightly different net than one process. SIGTERM stops it as Ctrl-C
    does; a resumed run continues from the last checkpoint written."""
    world = world or distributed.world()
    path = os.path.join(config.out, "classifier.npz")
    if config.batch_size < world.size:
        raise ValueError(f"batch-size {config.batch_size} is less than the {world.size} ranks")
    train_set = source(config, config.train_split, progress and world.rank == 0)
    val_set = source(config, config.val_split, progress and world.rank == 0)
    for name, split in (("training", train_set), ("validation", val_set)):
        if len(split) == 0:
            raise ValueError(f"the {name} split of {config.data} is empty")
    root = world.rank == 0
    if root:
        os.makedirs(config.out, exist_ok=True)
    with runlock.hold(config.out, log) if root else contextlib.nullcontext(), interrupts.terminate_as_interrupt():
        return _pretrain(config, path, train_set, val_set, resume, progress and root,
                         log if root else (lambda *_: None), world)


def make_optimizer(config, classifier):
    """Weight decay on the weights, not on biases or batch-norm scales and shifts."""
    decayed = [p for n, p in classifier.named_parameters() if n.endswith("weight") and not n.startswith("bn")]
    rest = [p for n, p in classifier.named_parameters() if not (n.endswith("weight") and not n.startswith("bn"))]
    groups = [{"params": decayed, "weight_decay": config.weight_decay}, {"params": rest, "weight_decay": 0.0}]
    return Adam(groups, config.lr) if config.optimizer == "adam" else SGD(groups, config.lr, config.momentum)


def _pretrain(config, path, train_set, val_set, resume, progress, log, world):
    """The body of ``pretrain``, run while --out is locked (by rank 0)."""
    log_path = os.path.join(config.out, "metrics.jsonl")
    if world.rank == 0:
        atomic.remove_leftovers(path, log)
    world.barrier()
    distributed.use_device_of(world.rank)
    classifier = VGGClassifier(config.num_classes, config.width, config.fc_width, config.crop, config.seed,
                               config.batchnorm, config.head, config.dropout)
    classifier.fc8.weight.data[...] = 0  # start from no opinion (loss log K), as the FCN's scorers do
    step, history, partial = 0, [], []
    if resume and os.path.exists(path):
        stored, state = read_checkpoint(path, config_class=None)
        if stored != config:
            raise ValueError(f"{path} was pre-trained with other settings; choose another --out")
        classifier = load_classifier(stored, state)
    optimizer = make_optimizer(config, classifier)
    if resume and os.path.exists(path):
        optimizer.load_state_dict(state["optim"])
        meta = state["meta"]
        history = meta["history"]
        step = meta.get("step", meta["epoch"] * train_set.steps)  # files from before mid-epoch saves
        partial = list(meta.get("partial_losses", []))
        log(f"resumed from {path} after epoch {meta['epoch']}" + (f", step {step}" if partial else ""))
    dropouts = [m for _, m in classifier.named_modules() if isinstance(m, nn.Dropout)]
    per_epoch, total = train_set.steps, train_set.steps * config.epochs
    bar = tqdm(total=total, initial=step, desc="pretrain classifier", unit="step", disable=not progress)
    started, images = time.time(), 0

    def save(epoch, losses):
        if world.rank == 0:
            save_checkpoint(path, config, classifier, optimizer,
                            {"kind": "classifier", "epoch": epoch, "step": step, "history": history,
                             "partial_losses": losses, "classes": [str(c) for c in train_set.classes],
                             "names": [str(c) for c in getattr(train_set, "names", train_set.classes)]})

    for epoch in range(step // per_epoch, config.epochs):
        losses, skip = (partial, step - epoch * per_epoch) if epoch == step // per_epoch else ([], 0)
        for k, (x, y) in enumerate(train_set.epoch(epoch)):
            if k < skip:
                continue  # done before the run was resumed
            for j, m in enumerate(dropouts):  # masks drawn from (seed, step, layer): a resumed run draws the same
                m.generator = np.random.default_rng([config.seed, step, j])
            warm = min(1.0, (step + 1) / config.warmup_steps) if config.warmup_steps else 1.0
            for group in optimizer.param_groups:
                group["lr"] = warm * config.lr * max(0.0, 1 - step / total) ** 0.9
            optimizer.zero_grad()
            losses.append(train_step(classifier, dropouts, x, y, world))
            if not np.isfinite(losses[-1]):
                raise ValueError(f"pre-training diverged at step {step + 1}; try a lower --lr (now {config.lr})")
            optimizer.step()
            step, images = step + 1, images + len(y)
            bar.update(1)
            bar.set_postfix(loss=f"{np.mean(losses[-20:]):.3f}", img_s=f"{images / (time.time() - started):.0f}")
            if step % config.checkpoint_every == 0 and k + 1 < per_epoch:
                save(epoch, losses)
        world.check_same(distributed.checksum(classifier.parameters()), f"the weights after epoch {epoch + 1}")
        top1, top5 = accuracy(classifier, val_set.validation(), world)
        step = (epoch + 1) * per_epoch  # a crop epoch may end a batch early: the count is per_epoch's
        history.append({"epoch": epoch + 1, "step": step, "loss": float(np.mean(losses)), "val_accuracy": top1,
                        "val_top5": top5, "seconds": time.time() - started + (history[-1]["seconds"] if history else 0)})
        started, images = time.time(), 0
        save(epoch + 1, [])
        if world.rank == 0:
            atomic.write_bytes(log_path, "".join(json.dumps(h) + "\n" for h in history).encode())
            classifier_curves(history, os.path.join(config.out, "curves.png"))
        if not progress:
            log(f"epoch {epoch + 1}/{config.epochs}: loss {history[-1]['loss']:.3f}, top-1 {100 * top1:.1f} %, "
                f"top-5 {100 * top5:.1f} %")
    bar.close()
    if world.rank == 0:
        atomic.write_json(os.path.join(config.out, "pretrain.json"), history)
    return classifier, history


def train_step(classifier, dropouts, x, y, world):
    """Forward and backward of one batch; returns its loss (the whole batch's, under MPI)."""
    if world.size == 1:
        loss = F.softmax_cross_entropy(classifier(Tensor(x)), y)
        loss.backward()
        return loss.item()
    rows = world.rows(len(y))  # every rank made the same batch; each computes its rows, divided by the whole
    for m in dropouts:
        m.shard = (rows.start, len(y))
    part = 0.0
    if rows.stop > rows.start:  # a short last batch may leave a rank without rows
        loss = F.softmax_cross_entropy(classifier(Tensor(x[rows])), y[rows], denominator=len(y))
        loss.backward()
        part = loss.item()
    return float(distributed.sum_gradients(world, classifier.parameters(), [part])[0])


def classifier_curves(history, path):
    """Training loss and validation top-1 / top-5 per epoch, side by side."""
    import matplotlib
    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    epochs = [h["epoch"] for h in history]
    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.4))
    left.plot(epochs, [h["loss"] for h in history], "o-", color="tab:red")
    left.set(xlabel="epoch", ylabel="mean training loss", title="training loss")
    right.plot(epochs, [100 * h["val_accuracy"] for h in history], "o-", label="top-1")
    right.plot(epochs, [100 * h.get("val_top5", np.nan) for h in history], "s--", label="top-5")
    right.set(xlabel="epoch", ylabel="validation accuracy (%)", title="validation accuracy", ylim=(0, 100))
    right.legend()
    for ax in (left, right):
        ax.grid(alpha=0.3)
        ax.xaxis.get_major_locator().set_params(integer=True)
    fig.tight_layout()
    atomic.write_atomically(path, lambda tmp: fig.savefig(tmp, dpi=100))
    plt.close(fig)
