"""Training, evaluation and prediction loops, with exact resume.

Every random choice (epoch order, augmentation, dropout masks) is drawn from
a generator seeded by counters: ``(seed, epoch)`` for the order, ``(seed,
epoch, image)`` for augmentation, ``(seed, step, layer)`` for dropout. So the
"RNG state" of a run is its seed and step, and a run resumed from a
checkpoint at step k makes the same draws as one that never stopped.
"""

import contextlib
import json
import os
import time

import numpy as np
from tqdm import tqdm

from . import atomic, distributed, interrupts, models, nn, runlock
from . import functional as F
from .checkpoint import (CheckpointError, init_path, initialize, load_checkpoint, read_checkpoint,  # noqa: F401 (re-exported)
                         save_checkpoint)
from .config import CLASS_WEIGHT_POWER, TrainConfig  # noqa: F401 (re-exported: minifcn.train.TrainConfig)
from .autograd import Tensor, no_grad
from .data import SIFTFlow, VOCSegmentation, augment, batches, normalize, verify
from .metrics import ConfusionMatrix
from .optim import SGD, Adam


def open_dataset(config, split, subset=None):
    """The dataset a config names: a VOCdevkit tree or a SIFT Flow folder."""
    if config.dataset == "voc":
        return VOCSegmentation(config.data, split, subset)
    if config.dataset == "siftflow":
        return SIFTFlow(config.data, split, config.image_size, subset)
    raise ValueError(f"dataset must be 'voc' or 'siftflow', got {config.dataset!r}")


class TrainingDiverged(RuntimeError):
    pass


# --- optimisation ----------------------------------------------------------------------------------------

def param_groups(model, lr, weight_decay):
    """The paper's recipe: biases learn twice as fast and are not decayed."""
    weights = [p for name, p in model.named_parameters() if not name.endswith("bias")]
    biases = [p for name, p in model.named_parameters() if name.endswith("bias")]
    return [{"params": weights, "lr": lr, "weight_decay": weight_decay},
            {"params": biases, "lr": 2 * lr, "weight_decay": 0.0}]


def make_optimizer(config, model):
    if config.optimizer not in ("sgd", "adam"):
        raise ValueError(f"optimizer must be 'sgd' or 'adam', got {config.optimizer!r}")
    groups = param_groups(model, config.lr, config.weight_decay)
    if config.optimizer == "sgd":
        return SGD(groups, config.lr, config.momentum)
    return Adam(groups, config.lr)


def learning_rate(config, step, total_steps):
    """The rate at ``step``: "poly" is lr (1 - step/total)^0.9, "fixed" is lr, both times a linear warm-up.

    Why warm up: a plain (no normalisation) VGG trained from random weights takes its largest steps
    first, and those can push whole layers of ReLUs negative for good; ramping up avoids that.
    """
    warm = min(1.0, (step + 1) / config.warmup_steps) if config.warmup_steps else 1.0
    if config.lr_policy == "poly":
        return warm * config.lr * (1 - step / total_steps) ** 0.9
    if config.lr_policy == "fixed":
        return warm * config.lr
    raise ValueError(f"lr_policy must be 'poly' or 'fixed', got {config.lr_policy!r}")


def predictions(model, dataset, batch_size=4, progress=False, world=None):
    """Yield (predicted classes, labels) batches over ``dataset`` in order, in eval mode, no augmentation.

    ``world``: yield only this rank's batches (every size-th); the batches are the ones one process
    would make, so each prediction is too."""
    world = world or distributed.World()
    order = np.arange(len(dataset))
    mine = [order[k:k + batch_size] for k in range(0, len(order), batch_size) if world.mine(k // batch_size)]
    model.eval()
    try:
        with no_grad():
            for x, y in tqdm((b for chunk in mine for b in batches(dataset, batch_size, chunk,
                                                                  preprocess=model.preprocess)),
                             total=len(mine), desc="eval", disable=not progress or world.rank != 0, leave=False):
                yield F.argmax_classes(model(Tensor(x))), y
    finally:
        model.train()


def evaluate(model, dataset, batch_size=4, num_classes=21, progress=False, world=None):
    """Confusion matrix of ``model`` over ``dataset`` (no augmentation).

    ``world`` (minifcn.distributed): the ranks share the batches and add up their counts, which are
    integers: the matrix is exactly one process's."""
    world = world or distributed.World()
    cm = ConfusionMatrix(num_classes)
    for pred, y in predictions(model, dataset, batch_size, progress, world):
        cm.update(pred, y)
    world.sum(cm.matrix)
    return cm


BALANCED_CEILING = 25


def class_weights(dataset, num_classes, power=1.0):
    """Per-class loss weights that lift the rare classes: w_c = f_c^-p / sum_k f_k^(1-p), f_c the share of
    class c among the labelled training pixels, so that the average weight of a pixel stays 1.

    p = 1 is Farabet's "balanced" loss, w_c = 1 / (K' f_c) with K' the classes present: each class carries
    the same total weight, which buys mean accuracy with pixel accuracy. p = 1/2 ("sqrt") goes halfway on
    the log scale: a class 100 times rarer weighs 10 times more, not 100. Capped at BALANCED_CEILING: on
    SIFT Flow the uncapped balanced weights run from 0.11 (sky) to 4,258 (moon, a few hundred pixels in
    all), and one moon would outweigh the rest of its batch. Classes absent from training keep weight 1
    (they never occur)."""
    counts = np.zeros(num_classes, np.int64)
    for image_id in dataset.ids:
        label = dataset.label(image_id)
        counts += np.bincount(label[label != 255].ravel(), minlength=num_classes)[:num_classes]
    present = counts > 0
    share = counts[present] / counts.sum()
    weights = np.ones(num_classes, np.float32)
    weights[present] = np.minimum(share ** -power / np.sum(share ** (1 - power)), BALANCED_CEILING)
    return weights


def _make_out(config):
    """Create --out and prove it is writable, before anything is trained."""
    try:
        os.makedirs(config.out, exist_ok=True)
        probe = atomic.temporary_name(os.path.join(config.out, ".minifcn-write-test"))  # two runs never share it
        with open(probe, "w"):
            pass
        os.remove(probe)
    except OSError as err:
        raise OSError(f"--out {config.out} is not a writable folder ({err.strerror or err})") from None


def _prepare_out(config, resume, overwrite, ckpt_path, log_path, log):
    """Never start over a finished run by accident; clear what a killed writer left half-written."""
    atomic.remove_leftovers(ckpt_path, log)
    if os.path.exists(ckpt_path) and not resume:
        if not overwrite:
            raise ValueError(f"{config.out} already holds a run ({ckpt_path}); continue it with --resume, or "
                             f"start again with --overwrite")
        os.remove(ckpt_path)
    if not os.path.exists(ckpt_path) and os.path.exists(log_path):
        os.remove(log_path)  # a new run: its log starts empty


def _agree_with_checkpoint(log_path, last):
    """Keep the log's lines up to ``last`` (the step of the checkpoint's newest logged epoch, 0 if none).

    An epoch's line is appended before the checkpoint that marks it logged is written; a kill between the
    two (or in the middle of the line) would otherwise leave it, or half of it, to be written again."""
    if not os.path.exists(log_path):
        return
    kept = []
    with open(log_path) as f:
        for line in f:
            try:
                record = json.loads(line)
            except ValueError:
                break  # a half-written last line
            if record["step"] > last:
                break
            kept.append(line if line.endswith("\n") else line + "\n")
    atomic.write_bytes(log_path, "".join(kept).encode())


def _check_resumable(stored, config, ckpt_path):
    """A checkpoint continues only the run it came from: the same net, widths and optimiser."""
    fields = ("model", "width", "fc_width", "num_classes", "input_mode", "optimizer", "upsampling", "freeze_body",
              "fc6_kernel", "seed")  # the seed too: it draws the order, the crops and the masks of every step
    changed = [f"{f} {getattr(stored, f)!r} -> {getattr(config, f)!r}" for f in fields
               if getattr(stored, f) != getattr(config, f)]
    if changed:
        raise ValueError(f"{ckpt_path} was trained with other settings ({'; '.join(changed)}): resume with the "
                         f"same ones, or start again with --overwrite")


def train(config, resume=False, max_steps=None, progress=True, log=print, overwrite=False, world=None):
    """Train ``config.model``; returns (model, last metrics). ``max_steps`` stops early (as an interrupt would).

    Before the first step, both splits are checked (not empty, every file readable) and --out is made
    and proven writable; an --out holding a checkpoint needs ``resume`` (continue it) or ``overwrite``.
    The run holds --out's lock throughout (``runlock``): a second run into the same folder is refused.
    A checkpoint is written only while the loss and every weight are finite, so the one on disk is
    always good. Ctrl-C or SIGTERM (``kill``, a scheduler) stops the run between two steps with a
    checkpoint, so resuming gives the uninterrupted run's weights bit for bit (``minifcn.interrupts``).
    The end of an epoch -- validation and its line in metrics.jsonl -- is recorded in the checkpoint as
    pending until done, so a run interrupted there finishes it when resumed; resuming also cuts the log
    back to the epochs the checkpoint knows were logged.

    Under ``mpiexec -n N`` (or with ``world``, a minifcn.distributed world) the N processes train one
    model on one global batch of ``batch_size``, each computing its rows; rank 0 alone holds --out,
    writes files and shows progress (see minifcn.distributed).
    """
    world = world or distributed.world()
    if resume and overwrite:
        raise ValueError("--resume continues the run in --out and --overwrite starts it again: give one of them")
    if config.init:
        init_path(config.init)  # a mistyped --init is said before the data is read
    train_set = open_dataset(config, config.train_split, config.train_subset)
    val_set = open_dataset(config, config.val_split, config.val_subset)
    verify(train_set, "training")
    verify(val_set, "validation")
    if config.batch_size < world.size:
        raise ValueError(f"batch-size {config.batch_size} is less than the {world.size} ranks: each rank needs "
                         f"at least one image of every batch")
    root = world.rank == 0
    if root:
        _make_out(config)
    with runlock.hold(config.out, log) if root else contextlib.nullcontext(), interrupts.terminate_as_interrupt():
        return _train(config, train_set, val_set, resume, max_steps, progress and root,
                      log if root else (lambda *_: None), overwrite, world)


def _train(config, train_set, val_set, resume, max_steps, progress, log, overwrite, world):
    """The body of ``train``, run while --out is locked (by rank 0)."""
    ckpt_path, log_path = os.path.join(config.out, "checkpoint.npz"), os.path.join(config.out, "metrics.jsonl")
    root = world.rank == 0
    if root:
        _prepare_out(config, resume, overwrite, ckpt_path, log_path, log)
    world.barrier()  # the other ranks read --out only once rank 0 holds it and has cleared it
    distributed.use_device_of(world.rank)
    model = models.build(config.model, **config.model_config())
    if config.init:  # staged training, or a pre-trained classifier: copy every weight that fits
        copied, fresh = initialize(model, config.init)
        log(f"init from {config.init}: copied {len(copied)} tensors; {len(fresh)} start fresh"
            + (f" ({', '.join(fresh)})" if fresh else ""))
    if config.freeze_body:  # the paper's FCN-32s-fixed: only the last layer (the scorers) is fine-tuned
        for name, p in model.named_parameters():
            p.requires_grad = p.requires_grad and name.startswith("score")
    weight = (class_weights(train_set, config.num_classes, CLASS_WEIGHT_POWER[config.class_weights])
              if config.class_weights else None)
    optimizer = make_optimizer(config, model)
    per_step = config.batch_size * config.accum_steps
    steps_per_epoch = max(1, len(train_set) // per_step)
    total_steps = steps_per_epoch * config.epochs
    step, metrics, pending, saved = 0, None, None, None  # saved: the step of the checkpoint on disk
    if resume and os.path.exists(ckpt_path):
        stored, state = read_checkpoint(ckpt_path)
        _check_resumable(stored, config, ckpt_path)
        model.load_state_dict(state["model"])
        try:
            optimizer.load_state_dict(state["optim"])
        except (KeyError, IndexError) as err:
            raise CheckpointError(f"{ckpt_path}: its optimiser state does not fit ({err})") from None
        step, metrics, pending = state["meta"]["step"], state["meta"].get("metrics"), state["meta"].get("pending")
        saved = step
        if root:
            _agree_with_checkpoint(log_path, metrics["step"] if metrics else 0)
        log(f"resumed from {ckpt_path} at step {step}/{total_steps}")
    dropouts = [m for _, m in model.named_modules() if isinstance(m, nn.Dropout)]
    probe = next(batches(train_set, config.batch_size, np.arange(min(len(train_set), config.batch_size)),
                         preprocess=model.preprocess))[0]
    verified = True  # whether the current weights are known to give finite outputs

    def outputs_finite():
        model.eval()
        with no_grad():
            finite = bool(np.isfinite(model(Tensor(probe)).numpy()).all())
        model.train()
        return finite

    def checkpoint(interrupted=False):
        """Write only weights known to be good: finite, with finite outputs on a fixed training batch.

        Every rank checks (their weights are equal, so they agree) and, unless interrupted, that the
        weights are still equal across ranks; rank 0 writes."""
        nonlocal saved, verified
        bad = [name for name, p in model.named_parameters() if not np.isfinite(p.numpy()).all()]
        if bad:
            diverged(f"weights became non-finite ({', '.join(bad[:3])}) after step {step}")
        if not verified and not outputs_finite():
            diverged(f"the outputs became non-finite after step {step}")
        verified = True
        if not interrupted:
            world.check_same(distributed.checksum(model.parameters()), f"the weights after step {step}")
        if root:
            save_checkpoint(ckpt_path, config, model, optimizer,
                            {"step": step, "epoch": step / steps_per_epoch, "seed": config.seed, "metrics": metrics,
                             "pending": pending, "ranks": world.size})
        saved = step

    def diverged(what):
        kept = (f"the last good checkpoint {ckpt_path} (step {saved}) is kept" if saved is not None
                else "no checkpoint was written")
        raise TrainingDiverged(f"{what}; {kept}. Try a lower --lr (now {config.lr}).")

    def finish_epoch():
        """Validate (when due) and log the epoch that ``pending`` describes."""
        nonlocal metrics, pending
        record, epoch_done = dict(pending), pending["epoch"]
        if config.val_every and (epoch_done % config.val_every == 0 or record["step"] == total_steps):
            cm = evaluate(model, val_set, config.batch_size, config.num_classes, world=world)
            record.update({k: v for k, v in cm.scores().items() if not k.startswith("class")})
        try:
            if root:
                with open(log_path, "a") as f:
                    f.write(json.dumps(record) + "\n")
        except OSError as err:
            raise OSError(err.errno, f"could not append epoch {epoch_done} to {log_path} ({err.strerror or err}); "
                                     f"the last checkpoint is intact, and --resume logs the epoch again") from None
        if not progress:  # no bar to watch: one line per epoch instead
            log(f"epoch {epoch_done}/{config.epochs}: " + ", ".join(
                f"{k} {v:.3f}" for k, v in record.items() if k not in ("epoch", "step")))
        metrics, pending = record, None
        checkpoint()

    bar = tqdm(total=total_steps, initial=step, desc=f"train {config.model}", disable=not progress)
    started, seen = time.time(), 0
    try:
        if pending:  # interrupted between an epoch's last step and its record: finish that first
            finish_epoch()
        while step < total_steps and (max_steps is None or step < max_steps):
            epoch, k = divmod(step, steps_per_epoch)
            order = np.random.default_rng([config.seed, epoch]).permutation(len(train_set))
            chunk = order[k * per_step:(k + 1) * per_step]
            for j, m in enumerate(dropouts):
                m.generator = np.random.default_rng([config.seed, step, j])
            for group, factor in zip(optimizer.param_groups, (1, 2)):
                group["lr"] = factor * learning_rate(config, step, total_steps)

            def transform(i, image, label):
                return augment(image, label, np.random.default_rng([config.seed, epoch, i]), config.scale, config.crop)

            optimizer.zero_grad()
            loss_total, correct, counted = 0.0, 0, 0
            for x, y in batches(train_set, config.batch_size, chunk, transform, model.preprocess):
                denominator = None
                if world.size > 1:  # every rank holds the global batch; it computes its rows of it
                    rows = world.rows(len(x))
                    for m in dropouts:
                        m.shard = (rows.start, len(x))
                    if config.loss_reduction == "mean":
                        denominator = F.pixel_weight(y, weight)
                    x, y = x[rows], y[rows]
                scores = model(Tensor(x))
                loss = F.softmax_cross_entropy(scores, y, reduction=config.loss_reduction, weight=weight,
                                               denominator=denominator)
                (loss * (1.0 / config.accum_steps)).backward()
                loss_total += loss.item() / config.accum_steps
                valid = y != 255
                correct += int((F.argmax_classes(scores) == y)[valid].sum())
                counted += int(valid.sum())
            if world.size > 1:  # the step's communication: gradients, loss and counts summed over the ranks
                loss_total, correct, counted = distributed.sum_gradients(world, model.parameters(),
                                                                         (loss_total, correct, counted))
            if not np.isfinite(loss_total):
                diverged(f"loss became {loss_total} at step {step} (epoch {epoch})")
            with interrupts.whole():  # a Ctrl-C or SIGTERM waits until the step, and an epoch's end, are recorded
                optimizer.step()
                step += 1
                verified = False
                if step % steps_per_epoch == 0:
                    pending = {"epoch": step // steps_per_epoch, "step": step, "loss": loss_total}
            seen += len(chunk)
            bar.update(1)
            bar.set_postfix(loss=f"{loss_total:.3f}", acc=f"{correct / max(counted, 1):.3f}",
                            img_s=f"{seen / (time.time() - started):.1f}")
            if pending:
                finish_epoch()
            elif step % config.checkpoint_every == 0:
                checkpoint()
    except KeyboardInterrupt:
        checkpoint(interrupted=True)
        log(f"\ninterrupted at step {step}; saved {ckpt_path}. Continue with --resume.")
        raise
    finally:
        bar.close()
    if max_steps is not None and step < total_steps:
        checkpoint()
    return model, metrics


def predict(model, image):
    """Class indices (H, W) for one uint8 HxWx3 image, as uint8 (255 is void, so at most 255 classes)."""
    model.eval()
    with no_grad():
        scores = model(Tensor(normalize(image, model.preprocess)[None]))
    if scores.shape[1] > 255:
        raise ValueError(f"the model scores {scores.shape[1]} classes; label maps hold at most 255 (0-254, with "
                         f"255 for void)")
    return F.argmax_classes(scores)[0].astype(np.uint8)
