"""Staged experiments (the paper's 32s -> 16s -> 8s recipe) that resume where they stopped.

A stage is a named TrainConfig; a stage may start from another stage's
checkpoint. Each stage's folder keeps its checkpoint, its training log, the
seconds it has trained (summed over runs) and, once done, its evaluation, so
re-running an experiment skips what is finished and continues what is not.
"""

import dataclasses
import json
import os
import time

import numpy as np

from .metrics import ConfusionMatrix, boundary_band
from .train import load_checkpoint, open_dataset, predict, predictions, train


@dataclasses.dataclass
class Stage:
    name: str
    config: object  # a TrainConfig whose ``out`` is this stage's folder
    init_from: str = None  # the name of an earlier stage


def stage(base, root, name, init_from=None, **changes):
    """A Stage named ``name`` whose config is ``base`` with ``changes``, writing under ``root/name``."""
    return Stage(name, dataclasses.replace(base, out=os.path.join(root, name), **changes), init_from)


def _read_json(path, default=None):
    if not os.path.exists(path):
        return default
    with open(path) as f:
        return json.load(f)


def _write_json(path, value):
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(value, f, indent=1)
    os.replace(tmp, path)


def run_stages(stages, band_width=3, exclude_absent=False, log=print, only=None, progress=True):
    """Train (or resume) and evaluate every stage in order; returns {name: result}.

    A result holds the four metrics on the config's val split, the same four
    restricted to a ``band_width``-px band around true outlines
    (``boundary``), per-class IU, and the training time in seconds.
    ``only``: names of the stages to run now (others are skipped), so that
    independent chains can run side by side in separate processes.
    """
    results, folders = {}, {s.name: s.config.out for s in stages}
    unknown = set(only or ()) - set(folders)
    if unknown:
        raise ValueError(f"no stages named {sorted(unknown)}; the stages are {list(folders)}")
    for stage in stages:
        if only is not None and stage.name not in only:
            continue
        config = stage.config
        if stage.init_from:
            if not os.path.exists(os.path.join(folders[stage.init_from], "result.json")):
                raise RuntimeError(f"stage {stage.name!r} starts from {stage.init_from!r}, which has not finished; "
                                   f"run {stage.init_from!r} first")
            config = dataclasses.replace(config, init=os.path.join(folders[stage.init_from], "checkpoint.npz"))
        os.makedirs(config.out, exist_ok=True)
        _check_same_config(config, stage.name)
        result_path = os.path.join(config.out, "result.json")
        result = _read_json(result_path)
        if result is None:
            timing_path = os.path.join(config.out, "seconds.json")
            started = time.time()
            try:
                model, _ = train(config, resume=True, log=log, progress=progress)
            finally:
                spent = _read_json(timing_path, 0.0) + time.time() - started
                _write_json(timing_path, spent)
            log(f"{stage.name}: trained ({spent / 60:.1f} min in all); evaluating")
            result = evaluate_with_band(model, open_dataset(config, config.val_split, config.val_subset),
                                        config.num_classes, band_width, exclude_absent)
            result["train_seconds"] = spent
            _write_json(result_path, result)
        log(f"{stage.name}: mean IU {100 * result['mean_iu']:.1f}, boundary mean IU "
            f"{100 * result['boundary']['mean_iu']:.1f}")
        results[stage.name] = result
    return results


def _check_same_config(config, name):
    """A stage folder belongs to one configuration: resuming it under another would mix two runs."""
    path, wanted = os.path.join(config.out, "config.json"), json.loads(json.dumps(dataclasses.asdict(config)))
    stored = _read_json(path)
    if stored is None:
        _write_json(path, wanted)
    elif stored != wanted:
        changed = sorted(k for k in wanted.keys() | stored.keys() if stored.get(k) != wanted.get(k))
        raise ValueError(f"stage {name!r} in {config.out} was started with other settings ({', '.join(changed)} "
                         f"differ); delete that folder or choose another output folder")


def evaluate_with_band(model, dataset, num_classes, band_width=3, exclude_absent=False):
    """The four metrics over all pixels and over the boundary band only (one image at a time)."""
    full, band = ConfusionMatrix(num_classes), ConfusionMatrix(num_classes)
    for pred, y in predictions(model, dataset, batch_size=1):
        full.update(pred, y)
        band.update(pred, np.where(boundary_band(y[0], band_width)[None], y, 255))
    keep = ("pixel_acc", "mean_acc", "mean_iu", "fw_iu")
    scores = full.scores(exclude_absent)
    return {**{k: scores[k] for k in keep}, "class_iu": scores["class_iu"],
            "boundary": {k: v for k, v in band.scores(exclude_absent).items() if k in keep}}


def stage_predictions(stages, dataset, indices):
    """For each image index: the image, its label and every stage's prediction (from its checkpoint)."""
    models = {s.name: load_checkpoint(os.path.join(s.config.out, "checkpoint.npz"))[1] for s in stages}
    rows = []
    for i in indices:
        image, label = dataset[i]
        rows.append((image, label, {name: predict(model, image) for name, model in models.items()}))
    return rows
