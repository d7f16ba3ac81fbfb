"""Staged experiments (the paper's 32s -> 16s -> 8s recipe) that resume where they stopped.

A stage is a named TrainConfig; a stage may start from another stage's
checkpoint. Each stage's folder keeps its checkpoint, its training log, the
seconds it has trained (summed over runs) and, once done, its evaluation, so
re-running an experiment skips what is finished and continues what is not.
"""

import concurrent.futures as cf
import contextlib
import dataclasses
import functools
import json
import multiprocessing as mp
import multiprocessing.connection
import os
import signal
import threading
import time

import numpy as np

from . import atomic
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


def run_stages(stages, band_width=3, exclude_absent=False, log=print, only=None, progress=True, jobs=1):
    """Train (or resume) and evaluate every stage; returns {name: result} in the stages' order.

    A result holds the four metrics on the config's val split, the same four
    restricted to a ``band_width``-px band around true outlines
    (``boundary``), per-class IU, and the training time in seconds.
    ``only``: names of the stages to run now (others are skipped).
    ``jobs``: how many stages may train at once, each in its own process with
    an equal share of the cores; a stage starts once the stage it starts from
    has finished, so independent chains (FCN-32s-fixed beside FCN-32s -> 16s
    -> 8s) run side by side, the longest chain first.
    """
    folders = {s.name: s.config.out for s in stages}
    unknown = set(only or ()) - set(folders)
    if unknown:
        raise ValueError(f"no stages named {sorted(unknown)}; the stages are {list(folders)}")
    if jobs < 1:
        raise ValueError(f"jobs must be >= 1, got {jobs}")
    chosen = [s for s in stages if only is None or s.name in only]
    names = [s.name for s in chosen]
    for s in chosen:
        parent_done = s.init_from and os.path.exists(os.path.join(folders[s.init_from], "result.json"))
        if s.init_from and not parent_done and s.init_from not in names[:names.index(s.name)]:
            raise RuntimeError(f"stage {s.name!r} starts from {s.init_from!r}, which has not finished; "
                               f"run {s.init_from!r} first")
    if jobs == 1:
        return {s.name: _run_stage(s, folders, band_width, exclude_absent, log, progress) for s in chosen}
    results = _run_in_processes(chosen, folders, jobs, band_width, exclude_absent, log)
    return {name: results[name] for name in names}


def _run_stage(stage, folders, band_width, exclude_absent, log, progress):
    """Train one stage to the end (resuming), evaluate it once, and keep the result beside its checkpoint."""
    config = stage.config
    if stage.init_from:
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
            atomic.write_json(timing_path, spent)
        log(f"{stage.name}: trained ({spent / 60:.1f} min in all); evaluating")
        result = evaluate_with_band(model, open_dataset(config, config.val_split, config.val_subset),
                                    config.num_classes, band_width, exclude_absent)
        result["train_seconds"] = spent
        atomic.write_json(result_path, result)
    log(f"{stage.name}: mean IU {100 * result['mean_iu']:.1f}, boundary mean IU "
        f"{100 * result['boundary']['mean_iu']:.1f}")
    return result


def _run_in_processes(chosen, folders, jobs, band_width, exclude_absent, log):
    """Run stages in up to ``jobs`` processes at once, each as soon as its parent stage is done.

    A stage gets cores // jobs threads, or every core when it will run alone (nothing else running or
    ready: then nothing can become ready before it ends, since the rest wait on it), so FCN-32s, which
    16s, 8s and the control all grow from, does not leave cores idle. Threads are set through the
    environment of a fresh process per stage (BLAS reads them at start-up), so the machine is never
    oversubscribed. Workers print one line per epoch, prefixed with their stage's name.
    """
    cores = os.cpu_count() or 1
    chain = _epochs_on_longest_chain(chosen)
    waiting, running, results = sorted(chosen, key=lambda s: -chain[s.name]), {}, {}
    try:
        while waiting or running:
            unfinished = {s.name for s in waiting} | {s.name for s, _ in running.values()}
            ready = [s for s in waiting if s.init_from not in unfinished]
            for s in ready[:jobs - len(running)]:
                waiting.remove(s)
                alone = not running and len(ready) == 1
                threads = str(cores if alone else max(1, cores // jobs))
                worker_log = functools.partial(print, f"[{s.name}]", flush=True)
                with _environment({k: threads for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
                                                        "NUMBA_NUM_THREADS")}):
                    pool = cf.ProcessPoolExecutor(1, mp_context=mp.get_context("spawn"))
                    future = pool.submit(_run_stage_in_worker, s, folders, band_width, exclude_absent, worker_log)
                running[future] = (s, pool)
                log(f"{s.name}: started ({threads} thread{'s' * (threads != '1')})")
            done, _ = cf.wait(running, return_when=cf.FIRST_COMPLETED)
            for future in done:
                s, pool = running.pop(future)
                pool.shutdown()
                if future.exception() is not None:
                    log(f"{s.name} failed; waiting for {[r.name for r, _ in running.values()] or 'nothing'} to "
                        f"finish (Ctrl-C stops them; their checkpoints are kept)")
                    for _, other_pool in running.values():
                        other_pool.shutdown()
                results[s.name] = future.result()  # a worker's error is raised here
    finally:
        for _, pool in running.values():
            pool.shutdown(cancel_futures=True)
    return results


def _run_stage_in_worker(stage, folders, band_width, exclude_absent, log):
    """``_run_stage`` in a worker process that stops when the process that started it is gone.

    If the parent is killed (``kill``, SIGKILL, a crash), nothing else would stop its worker, which
    would train on unseen for an hour. So a thread waits on the parent and, when it ends, sends this
    process SIGTERM, which training turns into a checkpoint and a clean stop (``minifcn.interrupts``);
    re-running the experiment resumes from there.
    """
    gone = threading.Event()

    def watch(parent):
        multiprocessing.connection.wait([parent.sentinel])
        gone.set()
        os.kill(os.getpid(), signal.SIGTERM)

    parent = mp.parent_process()
    if parent is not None:  # None only when called in the main process
        threading.Thread(target=watch, args=(parent,), daemon=True).start()
    try:
        return _run_stage(stage, folders, band_width, exclude_absent, log, False)
    finally:
        if gone.is_set():  # nobody is left to take a result: end here (the checkpoint is written)
            os._exit(128 + signal.SIGTERM)


def _epochs_on_longest_chain(stages):
    """Epochs from the start of each stage to the end of the longest chain that grows from it.

    Free cores go to the ready stage with the most work behind it (list
    scheduling by critical path): in Table 2 that starts FCN-32s, whose
    16s, 8s and control stages wait on it, before the independent baseline.
    """
    epochs = {s.name: s.config.epochs for s in stages}

    @functools.lru_cache(maxsize=None)
    def longest(name):
        return epochs[name] + max((longest(c.name) for c in stages if c.init_from == name), default=0)

    return {name: longest(name) for name in epochs}


@contextlib.contextmanager
def _environment(values):
    """Set environment variables for the duration of a block (worker processes inherit them)."""
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _check_same_config(config, name):
    """A stage folder belongs to one configuration: resuming it under another would mix two runs."""
    path, wanted = os.path.join(config.out, "config.json"), json.loads(json.dumps(dataclasses.asdict(config)))
    stored = _read_json(path)
    if stored is None:
        atomic.write_json(path, wanted)
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


def save_predictions(path, rows):
    """Keep ``stage_predictions`` rows in one .npz, so a figure can be redrawn without the checkpoints."""
    arrays = {}
    for i, (image, label, preds) in enumerate(rows):
        arrays[f"{i}/image"], arrays[f"{i}/label"] = image, label
        arrays.update({f"{i}/{name}": p for name, p in preds.items()})
    np.savez_compressed(path, **arrays)


def load_predictions(path):
    """The rows that ``save_predictions`` wrote, in their order, each prediction under its stage's name."""
    rows = {}
    with np.load(path) as f:
        for key in f.files:  # the archive keeps the order the arrays were written in
            i, name = key.split("/", 1)
            rows.setdefault(int(i), {})[name] = f[key]
    return [(r.pop("image"), r.pop("label"), r) for _, r in sorted(rows.items())]
