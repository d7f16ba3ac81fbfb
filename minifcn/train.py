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
from .data import SIFTFlow, VOCSegmentation, augment, batches, normalize
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

    def model_config(self):
        return dict(num_classes=self.num_classes, width=self.width, fc_width=self.fc_width,
                    input_mode=self.input_mode, learnable=self.learnable, upsampling=self.upsampling,
                    preprocess=self.preprocess, seed=self.seed)


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
    convolutionalized (``FCN.load_vgg16``). Raises if not one convolution weight of the body fits,
    which means the two nets differ in width.
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
    if not any(own[k].ndim == 4 and not k.startswith(("score", "upscore")) for k in copied):
        shapes = {k: np.shape(v) for k, v in source.items() if k in own}
        example = next(iter(shapes.items()), None)
        raise ValueError(f"--init {path}: no convolution weight fits this model" + (
            f" (e.g. {example[0]} is {example[1]} there, {own[example[0]].shape} here: another width?)"
            if example else " (no parameter name in common)"))
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


def train(config, resume=False, max_steps=None, progress=True, log=print):
    """Train ``config.model``; returns (model, last metrics). ``max_steps`` stops early (as an interrupt would)."""
    os.makedirs(config.out, exist_ok=True)
    ckpt_path, log_path = os.path.join(config.out, "checkpoint.npz"), os.path.join(config.out, "metrics.jsonl")
    train_set = open_dataset(config, config.train_split, config.train_subset)
    val_set = open_dataset(config, config.val_split, config.val_subset)
    model = models.build(config.model, **config.model_config())
    if config.init:  # staged training, or a pre-trained classifier: copy every weight that fits
        copied, fresh = initialize(model, config.init)
        log(f"init from {config.init}: copied {len(copied)} tensors; {len(fresh)} start fresh"
            + (f" ({', '.join(fresh)})" if fresh else ""))
    if config.freeze_body:  # the paper's FCN-32s-fixed: only the last layer (the scorers) is fine-tuned
        for name, p in model.named_parameters():
            p.requires_grad = p.requires_grad and name.startswith("score")
    optimizer = make_optimizer(config, model)
    per_step = config.batch_size * config.accum_steps
    steps_per_epoch = max(1, len(train_set) // per_step)
    total_steps = steps_per_epoch * config.epochs
    step, metrics = 0, None
    if resume and os.path.exists(ckpt_path):
        _, _, state = load_checkpoint(ckpt_path)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optim"])
        step, metrics = state["meta"]["step"], state["meta"].get("metrics")
        log(f"resumed from {ckpt_path} at step {step}/{total_steps}")
    dropouts = [m for _, m in model.named_modules() if isinstance(m, nn.Dropout)]

    def checkpoint():
        save_checkpoint(ckpt_path, config, model, optimizer,
                        {"step": step, "epoch": step / steps_per_epoch, "seed": config.seed, "metrics": metrics})

    bar = tqdm(total=total_steps, initial=step, desc=f"train {config.model}", disable=not progress)
    started, seen = time.time(), 0
    try:
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
                loss = F.softmax_cross_entropy(scores, y, reduction=config.loss_reduction)
                (loss * (1.0 / config.accum_steps)).backward()
                loss_total += loss.item() / config.accum_steps
                valid = y != 255
                correct += int((scores.numpy().argmax(axis=1) == y)[valid].sum())
                counted += int(valid.sum())
            if not np.isfinite(loss_total):
                raise TrainingDiverged(f"loss became {loss_total} at step {step} (epoch {epoch}); the last good "
                                       f"checkpoint {ckpt_path} is kept. Try a lower --lr (now {config.lr}).")
            optimizer.step()
            step += 1
            seen += len(chunk)
            bar.update(1)
            bar.set_postfix(loss=f"{loss_total:.3f}", acc=f"{correct / max(counted, 1):.3f}",
                            img_s=f"{seen / (time.time() - started):.1f}")
            if step % steps_per_epoch == 0:
                epoch_done = step // steps_per_epoch
                metrics = {"epoch": epoch_done, "step": step, "loss": loss_total}
                if config.val_every and (epoch_done % config.val_every == 0 or step == total_steps):
                    cm = evaluate(model, val_set, config.batch_size, config.num_classes)
                    metrics.update({k: v for k, v in cm.scores().items() if not k.startswith("class")})
                with open(log_path, "a") as f:
                    f.write(json.dumps(metrics) + "\n")
                if not progress:  # no bar to watch: one line per epoch instead
                    log(f"epoch {epoch_done}/{config.epochs}: " + ", ".join(
                        f"{k} {v:.3f}" for k, v in metrics.items() if k not in ("epoch", "step")))
                checkpoint()
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
