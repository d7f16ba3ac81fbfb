"""Checkpoints: one .npz of settings (JSON), weights, optimiser state and progress; and starting a
model from another's weights (staged training, a pre-trained classifier, PyTorch files).

A checkpoint is read without unpickling anything (``allow_pickle=False``): it holds arrays and JSON only.
"""

import dataclasses
import json
import math
import os
import zipfile

import numpy as np

from . import atomic, models, weights
from .config import PretrainConfig, TrainConfig
from .models.shapes import classifier_shapes, mismatches, model_shapes
from .models.vgg import VGGClassifier, torchvision_vgg16_names


def save_checkpoint(path, config, model, optimizer=None, meta=None):
    """Write config, weights, optimiser state and progress to one .npz, atomically: under a temporary name of
    this writer's own, renamed when complete. A full disk leaves the previous checkpoint as it was, removes
    the partial file and raises an OSError that names the checkpoint."""
    arrays = {f"model/{k}": v for k, v in model.state_dict().items()}
    if optimizer is not None:
        arrays.update({f"optim/{k}": np.asarray(v) for k, v in optimizer.state_dict().items()})
    arrays["config"] = np.array(json.dumps(dataclasses.asdict(config)))
    arrays["meta"] = np.array(json.dumps(meta or {}))
    atomic.write_atomically(path, lambda tmp: np.savez(tmp, **arrays))


class CheckpointError(ValueError):
    """A file that is not a usable minifcn checkpoint; the message names it and says why."""


def _npy_headers(archive, path):
    """{record name: (shape, dtype)} of every array in the archive, from the .npy headers alone.

    Nothing is allocated from what a header claims until it is known to be there: records must be stored
    uncompressed (np.savez writes them so; a deflated record could inflate without bound), and each
    header's shape must fit in the bytes its record really holds.
    """
    headers = {}
    for info in archive.infolist():
        name = info.filename[:-4] if info.filename.endswith(".npy") else None
        if name is None or info.compress_type != zipfile.ZIP_STORED:
            raise CheckpointError(f"{path} is not a minifcn checkpoint (record {info.filename} is "
                                  f"{'compressed' if name else 'not an array'}; minifcn stores arrays uncompressed)")
        with archive.open(info) as f:
            version = np.lib.format.read_magic(f)
            read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            shape, _, dtype = read(f)
        if dtype.hasobject or math.prod(shape) * dtype.itemsize > info.file_size:
            raise CheckpointError(f"{path} is not a minifcn checkpoint (array {name} claims {shape} of {dtype}, "
                                  f"{'Python objects' if dtype.hasobject else 'more than its record holds'})")
        headers[name] = shape, dtype
    return headers


def read_checkpoint(path, config_class=TrainConfig):
    """(config, state) from a checkpoint .npz, checked; state has 'model', 'optim' and 'meta'.

    ``config_class=None`` takes the settings class the checkpoint names (a PretrainConfig for a classifier).
    A file from a stranger is checked before anything it asks for is allocated: every record's size
    against its header, the settings against their own rules, and the shapes the settings imply against
    the arrays the file holds (``models.shapes``), so a model built from it is no bigger than the file.
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint {path} not found")
    try:
        with np.load(path, allow_pickle=False) as z:  # never unpickle: a checkpoint holds arrays and JSON only
            headers = _npy_headers(z.zip, path) if hasattr(z, "zip") else {}
            if "config" not in z.files or "meta" not in z.files:
                raise CheckpointError("no config or meta record")
            settings, meta = json.loads(str(z["config"])), json.loads(str(z["meta"]))
            if not isinstance(meta, dict) or not isinstance(settings, dict):
                raise CheckpointError("its config and meta records are not JSON objects")
            if config_class is None:
                config_class = PretrainConfig if meta.get("kind") == "classifier" else TrainConfig
            config = _settings(path, settings, config_class, meta)
            shapes = {k[6:]: headers[k][0] for k in headers if k.startswith("model/")}
            wrong = mismatches(expected_shapes(config), shapes)
            if wrong:
                raise CheckpointError(f"its arrays do not match its settings: {'; '.join(wrong[:2])}")
            state = {"model": {k[6:]: z[k] for k in z.files if k.startswith("model/")},
                     "optim": {k[6:]: z[k] for k in z.files if k.startswith("optim/")}, "meta": meta}
    except CheckpointError as err:
        raise err if str(err).startswith(path) else CheckpointError(f"{path} is not a minifcn checkpoint ({err})")
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, json.JSONDecodeError, RecursionError) as err:
        why = "not a .npz archive" if "pickle" in str(err) else str(err) or type(err).__name__
        raise CheckpointError(f"{path} is not a minifcn checkpoint ({why})") from err
    bad = [k for k, v in state["model"].items() if v.dtype.kind == "f" and not np.isfinite(v).all()]
    if bad:
        raise CheckpointError(f"{path} holds non-finite weights ({', '.join(bad[:3])}); it cannot be used")
    return config, state


def _settings(path, settings, config_class, meta):
    """The checkpoint's settings as ``config_class``, or an error that says what the file is instead."""
    known = {f.name for f in dataclasses.fields(config_class)}
    if config_class is TrainConfig and meta.get("kind") == "classifier":
        crop = settings.get("crop")
        kernel = 1 if settings.get("head") == "average" else crop // 32 if isinstance(crop, int) else "CROP/32"
        raise CheckpointError(f"{path} is a classifier from 'minifcn pretrain', not an FCN: start an FCN from it "
                              f"with 'minifcn train --init {path} --fc6-kernel {kernel}'")
    if set(settings) - known:
        raise CheckpointError(f"{path} is not a minifcn checkpoint (unknown settings {sorted(set(settings) - known)})")
    try:
        return config_class(**settings)
    except (TypeError, ValueError) as err:
        raise CheckpointError(f"{path} is not a minifcn checkpoint (its settings are invalid: {err})") from None


def expected_shapes(config):
    """The weight shapes a config's model has (classifier or FCN), by arithmetic."""
    if isinstance(config, PretrainConfig):
        return classifier_shapes(config.num_classes, config.width, config.fc_width, config.crop, config.head,
                                 config.batchnorm)
    return model_shapes(config.model, **config.model_config())


def load_checkpoint(path):
    """(config, model, state) from a checkpoint; state has 'model', 'optim' and 'meta'."""
    config, state = read_checkpoint(path)
    try:
        model = models.build(config.model, **config.model_config())
        model.load_state_dict(state["model"])
    except (ValueError, TypeError) as err:
        raise CheckpointError(f"{path} is not a minifcn checkpoint ({err})") from err
    return config, model, state


def init_path(path):
    """The file ``--init`` names: a path as it is, or the .npz of shipped weights of that name. Neither is one
    error that names the path and lists the weights that ship."""
    if os.path.exists(str(path)) or str(path).endswith((".npz", ".pth")):
        return str(path)
    from .zoo import path_of
    try:
        return path_of(str(path))
    except ValueError as err:
        raise FileNotFoundError(f"--init {path}: no such file, and {err}") from None


def initialize(model, path):
    """Start ``model`` from the weights in ``path``; returns (names copied, model names left as they were).

    A minifcn checkpoint (.npz) or a PyTorch file (.pth) with pytorch-fcn's names gives every tensor
    whose name and shape match (staged training: 32s -> 16s -> 8s); torchvision's VGG16 (.pth) is
    convolutionalized (``FCN.load_vgg16``), and so is a classifier from ``minifcn pretrain``
    (``FCN.load_classifier``). ``path`` may also name weights that ship with minifcn
    (``vgg16-tinyimagenet``: ``minifcn weights list``). Raises if a layer of the body (conv*, fc*) is
    there in another shape -- the two nets differ in width -- or if nothing at all is copied.
    """
    path = init_path(path)
    if str(path).endswith(".pth"):
        source = weights.state_dict_of(weights.load_pth(path))
        if weights.kind_of(source) == "vgg16":
            model.load_vgg16(source)
            copied = sorted(f"{target}.{part}" for target in torchvision_vgg16_names().values()
                            for part in ("weight", "bias"))
            return copied, sorted(set(dict(model.named_parameters())) - set(copied))
    else:
        config, state = read_checkpoint(path, config_class=None)
        if isinstance(config, PretrainConfig):  # the paper's recipe: a classifier, convolutionalized
            model.load_classifier(load_classifier(config, state))
            copied = sorted(k for k in dict(model.named_parameters()) if k.startswith(("conv", "fc6.", "fc7.")))
            return copied, sorted(set(dict(model.named_parameters())) - set(copied))
        source = state["model"]
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


def load_pretrained(name):
    """The shipped classifier ``name`` (``minifcn.zoo``) in eval mode; ``.classes`` are its outputs' ids in
    order (WordNet ids for Tiny ImageNet), ``.names`` their words, and ``.classify(photos)`` gives class
    probabilities."""
    from .zoo import path_of
    config, state = read_checkpoint(path_of(name), config_class=None)
    classifier = load_classifier(config, state)
    classifier.eval()
    return classifier


def load_classifier(config, state):
    """The VGGClassifier a pre-training checkpoint holds."""
    classifier = VGGClassifier(config.num_classes, config.width, config.fc_width, config.crop, config.seed,
                               config.batchnorm, config.head, config.dropout)
    try:
        classifier.load_state_dict(state["model"])
    except ValueError as err:
        raise CheckpointError(f"a classifier checkpoint that does not fit its own settings ({err})") from None
    classes, names = state["meta"].get("classes"), state["meta"].get("names")
    for what, value in (("classes", classes), ("names", names)):
        if value is not None and (not isinstance(value, list) or len(value) != config.num_classes
                                  or not all(isinstance(v, str) for v in value)):
            raise CheckpointError(f"a classifier checkpoint whose {what} are not {config.num_classes} strings")
    classifier.classes, classifier.names = classes, names or classes
    return classifier
