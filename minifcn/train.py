"""Training, evaluation and prediction loops, with exact resume.

Every random choice (epoch order, augmentation, dropout masks) is drawn from
a generator seeded by counters: ``(seed, epoch)`` for the order, ``(seed,
epoch, image)`` for augmentation, ``(seed, step, layer)`` for dropout. So the
"RNG state" of a run is its seed and step, and a run resumed from a
checkpoint at step k makes the same draws as one that never stopped.
"""

import dataclasses
import json
import math
import os
import time
import zipfile

import numpy as np
from tqdm import tqdm

from . import functional as F
from . import models, nn, weights
from .autograd import Tensor, no_grad
from .data import SIFTFlow, VOCSegmentation, augment, batches, normalize, verify
from .data.transforms import PREPROCESS
from .models.vgg import torchvision_vgg16_names
from .metrics import ConfusionMatrix
from .optim import SGD, Adam


@dataclasses.dataclass
class TrainConfig:
    data: str
    out: str = "runs/fcn"
    dataset: str = "voc"  # or "siftflow" (then num_classes=33)
    image_size: int = None  # siftflow: resize every image to this square size
    model: str = "fcn8s"
    width: float = 0.125
    fc_width: int = 512
    input_mode: str = "pad100"
    upsampling: str = "paper"  # final upsampler fixed bilinear, intermediate ones learned; "learned"; "fixed"
    learnable: bool = None  # the older switch: True = upsampling "learned", False = "fixed"
    freeze_body: bool = False  # FCN-32s-fixed as in the paper: only the score layers learn
    preprocess: str = "imagenet"  # input normalisation the weights expect ("caffe" for the authors' weights)
    num_classes: int = 21
    epochs: int = 10
    batch_size: int = 8
    accum_steps: int = 1
    lr: float = 0.01
    optimizer: str = "sgd"  # the paper's SGD with momentum, or "adam" (AdamW; lr about 1e-3)
    momentum: float = 0.9
    weight_decay: float = 5e-4
    lr_policy: str = "poly"  # or "fixed"
    warmup_steps: int = 0  # the rate ramps up linearly over these first steps (keeps from-scratch ReLUs alive)
    loss_reduction: str = "mean"  # "mean" over valid pixels, or "sum" (the paper's unnormalised loss)
    class_weights: str = None  # "balanced": each class's loss weighted by its inverse pixel frequency
    crop: int = None
    scale: tuple = (0.75, 1.25)
    train_split: str = "train"
    val_split: str = "val"
    train_subset: int = None
    val_subset: int = None
    init: str = None  # a checkpoint (.npz) or PyTorch file (.pth: VGG16 or FCN) whose weights start this model
    seed: int = 0
    checkpoint_every: int = 50  # steps between checkpoints (and at every epoch end)
    val_every: int = 1  # epochs between validation passes (0: never during training)

    def __post_init__(self):
        """Refuse, naming the setting, any value that would make a run train nothing or fail later."""
        def bad(name, need):
            raise ValueError(f"{name.replace('_', '-')} must be {need}, got {getattr(self, name)!r}")

        for name in ("epochs", "batch_size", "accum_steps", "checkpoint_every", "num_classes", "fc_width"):
            if not _is_int(getattr(self, name)) or getattr(self, name) < 1:
                bad(name, "an integer >= 1")
        for name in ("crop", "image_size", "train_subset", "val_subset"):
            if getattr(self, name) is not None and (not _is_int(getattr(self, name)) or getattr(self, name) < 1):
                bad(name, "an integer >= 1 (or unset)")
        for name in ("warmup_steps", "val_every"):
            if not _is_int(getattr(self, name)) or getattr(self, name) < 0:
                bad(name, "an integer >= 0")
        if not (isinstance(self.lr, (int, float)) and math.isfinite(self.lr) and self.lr > 0):
            bad("lr", "a finite number > 0")
        if not (isinstance(self.width, (int, float)) and self.width > 0):
            bad("width", "a number > 0")
        if not 0 <= self.momentum < 1 or not self.weight_decay >= 0:
            raise ValueError(f"momentum must be in [0, 1) and weight-decay >= 0, got {self.momentum}, "
                             f"{self.weight_decay}")
        if len(self.scale) != 2 or not 0 < self.scale[0] <= self.scale[1]:
            bad("scale", "a pair 0 < low <= high")
        choices = {"dataset": ("voc", "siftflow"), "model": tuple(models.MODELS), "optimizer": ("sgd", "adam"),
                   "lr_policy": ("poly", "fixed"), "loss_reduction": ("mean", "sum"),
                   "input_mode": models.fcn.INPUT_MODES, "upsampling": models.fcn.UPSAMPLING,
                   "preprocess": PREPROCESS, "class_weights": (None, "balanced")}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                bad(name, f"one of {', '.join(map(str, allowed))}")
        for name in ("learnable", "freeze_body"):
            if getattr(self, name) not in ((None, True, False) if name == "learnable" else (True, False)):
                bad(name, "true or false")

    def model_config(self):
        return dict(num_classes=self.num_classes, width=self.width, fc_width=self.fc_width,
                    input_mode=self.input_mode, learnable=self.learnable, upsampling=self.upsampling,
                    preprocess=self.preprocess, seed=self.seed)


def _is_int(value):
    return isinstance(value, int) and not isinstance(value, bool)


def open_dataset(config, split, subset=None):
    """The dataset a config names: a VOCdevkit tree or a SIFT Flow folder."""
    if config.dataset == "voc":
        return VOCSegmentation(config.data, split, subset)
    if config.dataset == "siftflow":
        return SIFTFlow(config.data, split, config.image_size, subset)
    raise ValueError(f"dataset must be 'voc' or 'siftflow', got {config.dataset!r}")


class TrainingDiverged(RuntimeError):
    pass


# --- checkpoints ---------------------------------------------------------------------------------------

def save_checkpoint(path, config, model, optimizer=None, meta=None):
    """Write config, weights, optimiser state and progress to one .npz, atomically (temp file + rename)."""
    arrays = {f"model/{k}": v for k, v in model.state_dict().items()}
    if optimizer is not None:
        arrays.update({f"optim/{k}": np.asarray(v) for k, v in optimizer.state_dict().items()})
    arrays["config"] = np.array(json.dumps(dataclasses.asdict(config)))
    arrays["meta"] = np.array(json.dumps(meta or {}))
    tmp = path + ".tmp.npz"
    np.savez(tmp, **arrays)
    os.replace(tmp, path)


class CheckpointError(ValueError):
    """A file that is not a usable minifcn checkpoint; the message names it and says why."""


def read_checkpoint(path):
    """(config, state) from a checkpoint .npz, checked; state has 'model', 'optim' and 'meta'."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint {path} not found")
    try:
        with np.load(path, allow_pickle=False) as z:  # never unpickle: a checkpoint holds arrays and JSON only
            if "config" not in z.files or "meta" not in z.files:
                raise CheckpointError("no config or meta record")
            settings, meta = json.loads(str(z["config"])), json.loads(str(z["meta"]))
            state = {"model": {k[6:]: z[k] for k in z.files if k.startswith("model/")},
                     "optim": {k[6:]: z[k] for k in z.files if k.startswith("optim/")}, "meta": meta}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, json.JSONDecodeError) as err:
        why = "not a .npz archive" if "pickle" in str(err) else str(err) or type(err).__name__
        raise CheckpointError(f"{path} is not a minifcn checkpoint ({why})") from err
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    if not isinstance(settings, dict) or set(settings) - known:
        raise CheckpointError(f"{path} is not a minifcn checkpoint (unknown settings "
                              f"{sorted(set(settings) - known) if isinstance(settings, dict) else settings!r})")
    bad = [k for k, v in state["model"].items() if v.dtype.kind == "f" and not np.isfinite(v).all()]
    if bad:
        raise CheckpointError(f"{path} holds non-finite weights ({', '.join(bad[:3])}); it cannot be used")
    return TrainConfig(**settings), state


def load_checkpoint(path):
    """(config, model, state) from a checkpoint; state has 'model', 'optim' and 'meta'."""
    config, state = read_checkpoint(path)
    try:
        model = models.build(config.model, **config.model_config())
        model.load_state_dict(state["model"])
    except (ValueError, TypeError) as err:
        raise CheckpointError(f"{path} is not a minifcn checkpoint ({err})") from err
    return config, model, state


def initialize(model, path):
    """Start ``model`` from the weights in ``path``; returns (names copied, model names left as they were).

    A minifcn checkpoint (.npz) or a PyTorch file (.pth) with pytorch-fcn's names gives every tensor
    whose name and shape match (staged training: 32s -> 16s -> 8s); torchvision's VGG16 (.pth) is
    convolutionalized (``FCN.load_vgg16``). Raises if a layer of the body (conv*, fc*) is there in
    another shape -- the two nets differ in width -- or if nothing at all is copied.
    """
    if str(path).endswith(".pth"):
        source = weights.state_dict_of(weights.load_pth(path))
        if weights.kind_of(source) == "vgg16":
            model.load_vgg16(source)
            copied = sorted(f"{target}.{part}" for target in torchvision_vgg16_names().values()
                            for part in ("weight", "bias"))
            return copied, sorted(set(dict(model.named_parameters())) - set(copied))
    else:
        source = read_checkpoint(path)[1]["model"]
    own = dict(model.named_parameters())
    copied = sorted(k for k, v in source.items() if k in own and own[k].shape == np.shape(v))
    misfits = sorted((k for k in source if k in own and k not in copied and k.startswith(("conv", "fc"))),
                     key=lambda k: (not k.endswith("weight"), k))  # name a weight first
    if misfits or not copied:
        example = misfits[0] if misfits else None
        raise ValueError(f"--init {path}: " + (
            f"its body does not fit this model ({example} is {np.shape(source[example])} there, "
            f"{own[example].shape} here: another width?)" if example else "no parameter name in common"))
    model.load_state_dict({k: source[k] for k in copied}, strict=False)
    return copied, sorted(set(own) - set(copied))


# --- the loops -------------------------------------------------------------------------------------------

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


def predictions(model, dataset, batch_size=4, progress=False):
    """Yield (predicted classes, labels) batches over ``dataset`` in order, in eval mode, no augmentation."""
    model.eval()
    try:
        with no_grad():
            for x, y in tqdm(batches(dataset, batch_size, np.arange(len(dataset)), preprocess=model.preprocess),
                             total=math.ceil(len(dataset) / batch_size), desc="eval", disable=not progress,
                             leave=False):
                yield model(Tensor(x)).numpy().argmax(axis=1), y
    finally:
        model.train()


def evaluate(model, dataset, batch_size=4, num_classes=21, progress=False):
    """Confusion matrix of ``model`` over ``dataset`` (no augmentation)."""
    cm = ConfusionMatrix(num_classes)
    for pred, y in predictions(model, dataset, batch_size, progress):
        cm.update(pred, y)
    return cm


def class_weights(dataset, num_classes):
    """Farabet's "balanced" loss: w_c = 1 / (K' f_c), f_c the share of class c among the labelled training
    pixels and K' the number of classes present. Each class then carries the same total weight, and the
    average weight of a pixel stays 1. Classes absent from training keep weight 1 (they never occur)."""
    counts = np.zeros(num_classes, np.int64)
    for image_id in dataset.ids:
        label = dataset.label(image_id)
        counts += np.bincount(label[label != 255].ravel(), minlength=num_classes)[:num_classes]
    present = counts > 0
    weights = np.ones(num_classes, np.float32)
    weights[present] = counts.sum() / (present.sum() * counts[present])
    return weights


def _prepare_out(config, resume, overwrite, ckpt_path, log_path):
    """Create --out, prove it is writable, and never start over a finished run by accident."""
    try:
        os.makedirs(config.out, exist_ok=True)
        probe = os.path.join(config.out, ".minifcn-write-test")
        with open(probe, "w"):
            pass
        os.remove(probe)
    except OSError as err:
        raise OSError(f"--out {config.out} is not a writable folder ({err.strerror or err})") from None
    if os.path.exists(ckpt_path) and not resume:
        if not overwrite:
            raise ValueError(f"{config.out} already holds a run ({ckpt_path}); continue it with --resume, or "
                             f"start again with --overwrite")
        os.remove(ckpt_path)
    if not os.path.exists(ckpt_path) and os.path.exists(log_path):
        os.remove(log_path)  # a new run: its log starts empty


def _check_resumable(stored, config, ckpt_path):
    """A checkpoint continues only the run it came from: the same net, widths and optimiser."""
    fields = ("model", "width", "fc_width", "num_classes", "input_mode", "optimizer", "upsampling", "freeze_body")
    changed = [f"{f} {getattr(stored, f)!r} -> {getattr(config, f)!r}" for f in fields
               if getattr(stored, f) != getattr(config, f)]
    if changed:
        raise ValueError(f"{ckpt_path} was trained with other settings ({'; '.join(changed)}): resume with the "
                         f"same ones, or start again with --overwrite")


def train(config, resume=False, max_steps=None, progress=True, log=print, overwrite=False):
    """Train ``config.model``; returns (model, last metrics). ``max_steps`` stops early (as an interrupt would).

    Before the first step, both splits are checked (not empty, every file readable) and --out is made
    and proven writable; an --out holding a checkpoint needs ``resume`` (continue it) or ``overwrite``.
    A checkpoint is written only while the loss and every weight are finite, so the one on disk is
    always good. The end of an epoch -- validation and its line in metrics.jsonl -- is recorded in the
    checkpoint as pending until done, so a run interrupted there finishes it when resumed.
    """
    ckpt_path, log_path = os.path.join(config.out, "checkpoint.npz"), os.path.join(config.out, "metrics.jsonl")
    train_set = open_dataset(config, config.train_split, config.train_subset)
    val_set = open_dataset(config, config.val_split, config.val_subset)
    verify(train_set, "training")
    verify(val_set, "validation")
    _prepare_out(config, resume, overwrite, ckpt_path, log_path)
    model = models.build(config.model, **config.model_config())
    if config.init:  # staged training, or a pre-trained classifier: copy every weight that fits
        copied, fresh = initialize(model, config.init)
        log(f"init from {config.init}: copied {len(copied)} tensors; {len(fresh)} start fresh"
            + (f" ({', '.join(fresh)})" if fresh else ""))
    if config.freeze_body:  # the paper's FCN-32s-fixed: only the last layer (the scorers) is fine-tuned
        for name, p in model.named_parameters():
            p.requires_grad = p.requires_grad and name.startswith("score")
    weight = class_weights(train_set, config.num_classes) if config.class_weights == "balanced" else None
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

    def checkpoint():
        """Write only weights known to be good: finite, with finite outputs on a fixed training batch."""
        nonlocal saved, verified
        bad = [name for name, p in model.named_parameters() if not np.isfinite(p.numpy()).all()]
        if bad:
            diverged(f"weights became non-finite ({', '.join(bad[:3])}) after step {step}")
        if not verified and not outputs_finite():
            diverged(f"the outputs became non-finite after step {step}")
        verified = True
        save_checkpoint(ckpt_path, config, model, optimizer, {"step": step, "epoch": step / steps_per_epoch,
                                                              "seed": config.seed, "metrics": metrics,
                                                              "pending": pending})
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
            cm = evaluate(model, val_set, config.batch_size, config.num_classes)
            record.update({k: v for k, v in cm.scores().items() if not k.startswith("class")})
        with open(log_path, "a") as f:
            f.write(json.dumps(record) + "\n")
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
                scores = model(Tensor(x))
                loss = F.softmax_cross_entropy(scores, y, reduction=config.loss_reduction, weight=weight)
                (loss * (1.0 / config.accum_steps)).backward()
                loss_total += loss.item() / config.accum_steps
                valid = y != 255
                correct += int((scores.numpy().argmax(axis=1) == y)[valid].sum())
                counted += int(valid.sum())
            if not np.isfinite(loss_total):
                diverged(f"loss became {loss_total} at step {step} (epoch {epoch})")
            optimizer.step()
            step += 1
            verified = False
            seen += len(chunk)
            bar.update(1)
            bar.set_postfix(loss=f"{loss_total:.3f}", acc=f"{correct / max(counted, 1):.3f}",
                            img_s=f"{seen / (time.time() - started):.1f}")
            if step % steps_per_epoch == 0:
                pending = {"epoch": step // steps_per_epoch, "step": step, "loss": loss_total}
                finish_epoch()
            elif step % config.checkpoint_every == 0:
                checkpoint()
    except KeyboardInterrupt:
        checkpoint()
        log(f"\ninterrupted at step {step}; saved {ckpt_path}. Continue with --resume.")
        raise
    finally:
        bar.close()
    if max_steps is not None and step < total_steps:
        checkpoint()
    return model, metrics


def predict(model, image):
    """Class indices (H, W) for one uint8 HxWx3 image."""
    model.eval()
    with no_grad():
        return model(Tensor(normalize(image, model.preprocess)[None])).numpy().argmax(axis=1)[0].astype(np.uint8)
