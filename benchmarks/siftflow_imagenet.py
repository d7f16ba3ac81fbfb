"""The paper's Table 2 on SIFT Flow's real photos, from a classifier that learned from ImageNet's photos.

The body is a shipped classifier (``--weights``; ``minifcn weights list``), by default
``vgg16-tinyimagenet`` (the published table's start; the first table started from ``vgg16-tinyimagenet-12ep``),
convolutionalized (its batch norms folded, fc6 a 1x1 convolution). The defaults are the published run's
schedule: 9 epochs of FCN-32s, 2 each of 16s and 8s, 2 of the fixed stages. Stages, as in the paper:

    fcn32s-fixed     the body frozen, only the score layer learning (the paper's FCN-32s-fixed)
    fcn32s           end to end
    fcn16s, fcn8s    each from the one before
    fcn32s-control   FCN-32s trained on for as many epochs as 16s and 8s add

and, with the same schedule from random weights (the transfer effect, measured):

    random-fcn32s-fixed   a random body frozen, only the score layer learning
    random-fcn8s          FCN-8s end to end for as many epochs as the 32s -> 16s -> 8s chain

Scores are taken on the 200 test photos at their native 256 x 256, leaving out the classes absent
from them (cow, desert, moon), as the paper does; training uses ``--size`` (default 256, native).
Re-running resumes; ``--only`` runs some stages now. Writes ``results/siftflow-imagenet.json`` (the
schema of ``siftflow.json``: ``results``, ``from_random``, ``pretrain``) and, once FCN-8s is done, its
predictions for every test photo in the label files' own values (1-33, ``_test_predictions.npz``) and
the figure (photo / 32s / 16s / 8s / truth). Then ``siftflow.publish_best`` makes it ``siftflow.json``
if its FCN-8s is the best SIFT Flow run by the issue's goals.
"""

import argparse
import dataclasses
import json
import os
import sys
import time

import numpy as np

from minifcn import atomic, zoo
from minifcn.data import SIFTFLOW_CLASSES, SIFTFlow
from minifcn.experiment import evaluate_with_band, run_stages, save_predictions, stage, stage_predictions
from minifcn.train import TrainConfig, load_checkpoint, predictions
from minifcn.viz import prediction_grid
from siftflow import examples, publish_best

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.environ.get("MINIFCN_SIFTFLOW", os.path.join(HERE, "..", "..", "shared", "data", "siftflow"))
WEIGHTS = "vgg16-tinyimagenet"  # the body the published table was measured from (top-1 35.9 %): the default
RANDOM = ("random-fcn32s-fixed", "random-fcn8s")


def plan(args, about):
    base = TrainConfig(data=ROOT, out="", dataset="siftflow", image_size=args.size, num_classes=len(SIFTFLOW_CLASSES),
                       width=about["width"], fc_width=about["fc_width"], fc6_kernel=1, input_mode="pad32",
                       epochs=args.epochs, batch_size=args.batch_size, optimizer="adam", lr=args.lr, warmup_steps=100,
                       train_split="trainval", val_split="test", val_every=0, seed=args.seed)
    later = dict(epochs=args.later_epochs, lr=args.lr / 2, init=None)
    chain = args.epochs + 2 * args.later_epochs
    return [stage(base, args.out, "fcn32s-fixed", model="fcn32s", init=args.weights, freeze_body=True,
                  epochs=args.fixed_epochs),
            stage(base, args.out, "fcn32s", model="fcn32s", init=args.weights),
            stage(base, args.out, "fcn16s", "fcn32s", model="fcn16s", **later),
            stage(base, args.out, "fcn8s", "fcn16s", model="fcn8s", **later),
            stage(base, args.out, "fcn32s-control", "fcn32s", model="fcn32s", **{**later, "epochs": 2 * args.later_epochs}),
            stage(base, args.out, "random-fcn32s-fixed", model="fcn32s", freeze_body=True, epochs=args.fixed_epochs),
            stage(base, args.out, "random-fcn8s", model="fcn8s", epochs=chain)]


def save_test_predictions(result_stage, test, path):
    """The stage's prediction of every test photo, keyed by test id, in the label files' own values (1-33)."""
    _, model, _ = load_checkpoint(os.path.join(result_stage.config.out, "checkpoint.npz"))
    maps = {test.ids[i]: (pred[0] + 1).astype(np.uint8) for i, (pred, _) in enumerate(predictions(model, test, 1))}
    np.savez_compressed(path, **maps)


def native(result_stage, test):
    """The stage's scores on the test photos at 256 x 256 (a net trained at another size is run on them as they are)."""
    _, model, _ = load_checkpoint(os.path.join(result_stage.config.out, "checkpoint.npz"))
    return evaluate_with_band(model, test, len(SIFTFLOW_CLASSES), exclude_absent=True)


def row(result_stage, args, test):
    """A finished stage's row of the table, scored at 256 x 256; None while it is not finished."""
    path = os.path.join(result_stage.config.out, "result.json")
    if not os.path.exists(path):
        return None
    with open(path) as f:
        result = json.load(f)
    if args.size:  # scored at the training size by run_stages; the published numbers are at 256
        result = {**native(result_stage, test), "train_seconds": result["train_seconds"]}
    result["train_minutes"] = result.pop("train_seconds") / 60
    return result


def parser(shipped, description=__doc__):
    """The options (``shipped``: the classifiers that ship, ``zoo.available()``); siftflow_rerun.py takes them too."""
    p = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="runs/siftflow-imagenet", help="checkpoints and per-stage results")
    p.add_argument("--results", default=os.path.join(HERE, "results"))
    p.add_argument("--size", type=int, default=None, help="train on photos resized to size x size (default: 256)")
    p.add_argument("--epochs", type=int, default=9, help="epochs of FCN-32s")
    p.add_argument("--fixed-epochs", type=int, default=2, help="epochs of the FCN-32s-fixed stages")
    p.add_argument("--later-epochs", type=int, default=2, help="epochs of the 16s and 8s stages")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--lr", type=float, default=1e-3, help="Adam's rate (halved for 16s and 8s)")
    p.add_argument("--jobs", type=int, default=2, help="stages trained at once, one process each")
    p.add_argument("--only", nargs="+", help="run only these stages now")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--weights", default=WEIGHTS, choices=sorted(shipped),
                   help="the shipped classifier the body comes from (minifcn weights list)")
    return p


def main(argv=None):
    shipped = zoo.available()  # read once: the choices, and the chosen one's provenance
    args = parser(shipped).parse_args(argv)
    if not os.path.isdir(ROOT):
        sys.exit(f"SIFT Flow not found at {ROOT}; set MINIFCN_SIFTFLOW")
    about = shipped[args.weights]  # its sizes for the plan, its scores for the record
    started, stages = time.time(), plan(args, about)
    run_stages(stages, exclude_absent=True, jobs=args.jobs, only=args.only)
    test = SIFTFlow(ROOT, "test")  # native 256 x 256
    results, from_random, minutes = {}, {}, 0.0
    for s in stages:
        result = row(s, args, test)
        if result is None:
            continue
        minutes += result["train_minutes"]
        (from_random if s.name in RANDOM else results)[s.name.removeprefix("random-")] = result
    record = {"setup": {**{k: v for k, v in vars(args).items() if k not in ("out", "results", "only")},
                        "stages": {s.name: dataclasses.asdict(s.config) for s in stages}},
              "results": results, "from_random": from_random,
              "pretrain": {"dataset": about["dataset"], "top1": about["top1"], "top5": about["top5"],
                           "minutes": about["minutes"], "weights": args.weights},
              "train_minutes_total": minutes, "this_run_minutes": (time.time() - started) / 60,
              "classes": list(SIFTFLOW_CLASSES)}
    os.makedirs(args.results, exist_ok=True)
    atomic.write_json(os.path.join(args.results, "siftflow-imagenet.json"), record)
    if "fcn8s" in results:
        eight = next(s for s in stages if s.name == "fcn8s")
        save_test_predictions(eight, test, os.path.join(args.results, "siftflow-imagenet_test_predictions.npz"))
        shown = [s for s in stages if s.name in ("fcn32s", "fcn16s", "fcn8s")]
        rows = stage_predictions(shown, test, examples(test))
        save_predictions(os.path.join(args.results, "siftflow-imagenet_predictions.npz"), rows)
        prediction_grid(rows, ["FCN-32s", "FCN-16s", "FCN-8s"], os.path.join(args.results, "siftflow-imagenet.png"),
                        "SIFT Flow test photos, from the Tiny ImageNet classifier: FCN-32s, 16s, 8s", SIFTFLOW_CLASSES)
        publish_best(args.results)
    for group, rows in (("from the Tiny ImageNet classifier", results), ("from random weights", from_random)):
        for name, r in rows.items():
            print(f"{group:34} {name:15} pixel acc {100 * r['pixel_acc']:.1f}  mean acc {100 * r['mean_acc']:.1f}  "
                  f"mean IU {100 * r['mean_iu']:.1f}  f.w. IU {100 * r['fw_iu']:.1f}  ({r['train_minutes']:.1f} min)")


if __name__ == "__main__":
    main()
