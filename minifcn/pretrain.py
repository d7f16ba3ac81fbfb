"""The paper's starting point, in miniature: a classifier, trained first, becomes FCN-32s's body.

FCNs work because a net that already recognises things is convolutionalized and then fine-tuned to
label every pixel. The paper starts from VGG16 trained on ImageNet; here the classifier is minifcn's
narrow VGG16 (``VGGClassifier``), trained on classification crops cut from the segmentation training
images themselves:

- each crop is centred on a pixel of a class drawn uniformly from the classes in the image, so that
  rare classes are seen as often as common ones (images are first resized by a random factor drawn
  from ``scale``; parts of a crop that fall outside the image are void);
- its label is the class that covers most of its labelled pixels.

Its fully connected fc6 sees the whole (crop/32) x (crop/32) pool5 map, so ``convolutionalize`` turns
it into a convolution of that size: the FCN that starts from it is built with ``fc6_kernel = crop/32``
(``minifcn train --init OUT/classifier.npz --fc6-kernel K``; ``checkpoint.initialize`` does the
conversion). The checkpoint is written after every epoch and a run resumes from it.
"""

import contextlib
import json
import os
import time

import numpy as np
from PIL import Image
from tqdm import tqdm

from . import atomic, distributed, nn, runlock
from . import functional as F
from .autograd import Tensor, no_grad
from .checkpoint import load_classifier, read_checkpoint, save_checkpoint
from .config import PretrainConfig  # noqa: F401  (the settings of this stage live with the others)
from .data import SIFTFlow, VOCSegmentation, normalize
from .data.voc import IGNORE
from .models.vgg import VGGClassifier
from .optim import Adam


VALIDATION = 10 ** 9  # the seed key of the validation crops (epochs use 0, 1, ...)


def open_split(config, split):
    if config.dataset == "siftflow":
        return SIFTFlow(config.data, split, config.image_size)
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


def accuracy(classifier, dataset, config, world=None):
    """Top-1 accuracy on the validation images' crops (the same crops every time); under MPI the ranks take
    turns by batch and add up their counts."""
    world = world or distributed.World()
    classifier.eval()
    counts = np.zeros(2, np.int64)  # right, total
    with no_grad():
        for k, (x, y) in enumerate(batches_of_crops(dataset, config, range(len(dataset)), (config.seed, VALIDATION))):
            if world.mine(k):
                counts += int((classifier(Tensor(x)).numpy().argmax(axis=1) == y).sum()), len(y)
    classifier.train()
    right, total = world.sum(counts)
    return int(right) / max(int(total), 1)


def pretrain(config, resume=True, progress=True, log=print, world=None):
    """Train the classifier; returns (classifier, log of epochs). Writes OUT/classifier.npz every epoch.

    Under ``mpiexec -n N`` the ranks share each batch of crops as ``train`` does (minifcn.distributed)."""
    world = world or distributed.world()
    path = os.path.join(config.out, "classifier.npz")
    train_set, val_set = open_split(config, config.train_split), open_split(config, config.val_split)
    for name, split in (("training", train_set), ("validation", val_set)):
        if len(split) == 0:
            raise ValueError(f"the {name} split of {config.data} is empty")
    if config.batch_size < world.size:
        raise ValueError(f"batch-size {config.batch_size} is less than the {world.size} ranks")
    root = world.rank == 0
    if root:
        os.makedirs(config.out, exist_ok=True)
    with runlock.hold(config.out, log) if root else contextlib.nullcontext():
        return _pretrain(config, path, train_set, val_set, resume, progress and root,
                         log if root else (lambda *_: None), world)


def _pretrain(config, path, train_set, val_set, resume, progress, log, world):
    """The body of ``pretrain``, run while --out is locked (by rank 0)."""
    if world.rank == 0:
        atomic.remove_leftovers(path, log)
    world.barrier()
    distributed.use_device_of(world.rank)
    classifier = VGGClassifier(config.num_classes, config.width, config.fc_width, config.crop, config.seed)
    classifier.fc8.weight.data[...] = 0  # start from no opinion (loss log K), as the FCN's scorers do
    epochs, history = 0, []
    if resume and os.path.exists(path):
        stored, state = read_checkpoint(path, config_class=None)
        if stored != config:
            raise ValueError(f"{path} was pre-trained with other settings; choose another --out")
        classifier = load_classifier(stored, state)
    optimizer = Adam([{"params": [p for n, p in classifier.named_parameters() if not n.endswith("bias")],
                       "weight_decay": config.weight_decay},
                      {"params": [p for n, p in classifier.named_parameters() if n.endswith("bias")],
                       "weight_decay": 0.0}], config.lr)
    if resume and os.path.exists(path):
        optimizer.load_state_dict(state["optim"])
        epochs, history = state["meta"]["epoch"], state["meta"]["history"]
        log(f"resumed from {path} after epoch {epochs}")
    dropouts = [m for _, m in classifier.named_modules() if isinstance(m, nn.Dropout)]
    per_epoch = -(-len(train_set) * config.crops_per_image // config.batch_size)
    total = per_epoch * config.epochs
    bar = tqdm(total=total, initial=epochs * per_epoch, desc="pretrain classifier", disable=not progress)
    started = time.time()
    for epoch in range(epochs, config.epochs):
        order = np.random.default_rng([config.seed, epoch]).permutation(len(train_set))
        losses = []
        for k, (x, y) in enumerate(batches_of_crops(train_set, config, order, (config.seed, epoch))):
            step = epoch * per_epoch + k
            for j, m in enumerate(dropouts):  # masks drawn from (seed, step, layer): a resumed run draws the same
                m.generator = np.random.default_rng([config.seed, step, j])
            warm = min(1.0, (step + 1) / config.warmup_steps) if config.warmup_steps else 1.0
            for group in optimizer.param_groups:
                group["lr"] = warm * config.lr * (1 - step / total) ** 0.9
            optimizer.zero_grad()
            if world.size == 1:
                loss = F.softmax_cross_entropy(classifier(Tensor(x)), y)
                loss.backward()
                losses.append(loss.item())
            else:  # every rank cut the same crops; each computes its rows, divided by the whole batch
                rows = world.rows(len(y))
                for m in dropouts:
                    m.shard = (rows.start, len(y))
                part = 0.0
                if rows.stop > rows.start:  # a short last batch may leave a rank without rows
                    loss = F.softmax_cross_entropy(classifier(Tensor(x[rows])), y[rows], denominator=len(y))
                    loss.backward()
                    part = loss.item()
                losses.append(float(distributed.sum_gradients(world, classifier.parameters(), [part])[0]))
            optimizer.step()
            bar.update(1)
            bar.set_postfix(loss=f"{np.mean(losses[-20:]):.3f}")
        if not np.isfinite(losses).all():
            raise ValueError(f"pre-training diverged in epoch {epoch + 1}; try a lower --lr (now {config.lr})")
        world.check_same(distributed.checksum(classifier.parameters()), f"the weights after epoch {epoch + 1}")
        history.append({"epoch": epoch + 1, "loss": float(np.mean(losses)),
                        "val_accuracy": accuracy(classifier, val_set, config, world),
                        "seconds": time.time() - started + (history[-1]["seconds"] if history else 0)})
        started = time.time()
        if world.rank == 0:
            save_checkpoint(path, config, classifier, optimizer, {"kind": "classifier", "epoch": epoch + 1,
                                                                  "history": history})
        if not progress:
            log(f"epoch {epoch + 1}/{config.epochs}: loss {history[-1]['loss']:.3f}, crop accuracy "
                f"{100 * history[-1]['val_accuracy']:.1f} %")
    bar.close()
    if world.rank == 0:
        atomic.write_bytes(os.path.join(config.out, "pretrain.json"), json.dumps(history, indent=1).encode())
    return classifier, history
