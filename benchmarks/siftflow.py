"""FCN-32s, 16s and 8s on SIFT Flow's real photographs, on a CPU, in at most an hour of training.

Reads ``../shared/data/siftflow`` (or $MINIFCN_SIFTFLOW): 2,488 photos of 256x256 with 33 classes and
the FCN paper's split. Images and labels are resized to ``--size`` (default 128) for training and
testing. The means leave out classes absent from the 200 test images (cow, desert, moon), as the
paper does. Re-running resumes from the checkpoints.

Stages, as in the paper: FCN-32s, then FCN-16s from it, then FCN-8s from that; beside them a control,
FCN-32s trained on for as many epochs as 16s and 8s add, so the skips are not credited with what
longer training does. Two stages train at a time (``--jobs``), one process and one core each.
Variants (each writes its own results file):

    python benchmarks/siftflow.py                 # from random weights -> results/siftflow-scratch.json
    python benchmarks/siftflow.py --pretrain      # the paper's recipe: a classifier on crops of the
                                                  # training photos first, convolutionalized
    python benchmarks/siftflow.py --balanced      # loss weighted by inverse class frequency (Farabet's
                                                  # "balanced"): rare classes count as much as sky;
                                                  # with --pretrain too: results/siftflow-pretrained-balanced
The best of these, by the issue's goals, is also written as results/siftflow.json and siftflow.png.
"""

import argparse
import dataclasses
import json
import os
import sys
import time

import numpy as np

from minifcn import atomic
from minifcn.config import PretrainConfig
from minifcn.data import SIFTFLOW_CLASSES, SIFTFlow
from minifcn.experiment import run_stages, save_predictions, stage, stage_predictions
from minifcn.pretrain import pretrain
from minifcn.train import TrainConfig
from minifcn.viz import prediction_grid

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.environ.get("MINIFCN_SIFTFLOW", os.path.join(HERE, "..", "..", "shared", "data", "siftflow"))
PAPER = {"fcn16s": {"pixel_acc": 85.2, "mean_acc": 51.7, "mean_iu": 39.5, "fw_iu": 76.1}}  # FCN paper, Table 5
FROM_SCRATCH = {  # convnets trained from scratch on this split, FCN paper Table 5: pixel acc, mean acc
    "Farabet et al. 2013 (natural)": (78.5, 29.6), "Farabet et al. 2013 (balanced)": (72.3, 50.8),
    "Pinheiro & Collobert 2014": (77.7, 29.8)}


def variant(args):
    """scratch, pretrained, scratch-balanced or pretrained-balanced: each variant has its own folder and file."""
    return ("pretrained" if args.pretrain else "scratch") + ("-balanced" if args.balanced else "")


def stages(args, init=None):
    base = TrainConfig(data=ROOT, out="", dataset="siftflow", image_size=args.size, num_classes=len(SIFTFLOW_CLASSES),
                       width=args.width, fc_width=args.fc_width, input_mode="pad32", epochs=args.epochs,
                       batch_size=8, optimizer="adam", lr=args.lr, warmup_steps=100, crop=args.crop,
                       train_split="trainval", val_split="test", val_every=0, seed=args.seed,
                       class_weights="balanced" if args.balanced else None, init=init,
                       fc6_kernel=args.pretrain_crop // 32 if init else 7)
    root = os.path.join(args.out, variant(args))  # the classifier lives in <out>/pretrained/classifier
    later = dict(epochs=args.later_epochs, lr=args.lr / 2, init=None)
    return [stage(base, root, "fcn32s", model="fcn32s"),
            stage(base, root, "fcn16s", "fcn32s", model="fcn16s", **later),
            stage(base, root, "fcn8s", "fcn16s", model="fcn8s", **later),
            stage(base, root, "fcn32s-longer", "fcn32s", model="fcn32s", **{**later, "epochs": 2 * args.later_epochs})]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="runs/siftflow", help="checkpoints and per-stage results")
    p.add_argument("--results", default=os.path.join(HERE, "results"))
    p.add_argument("--size", type=int, default=128, help="images and labels are resized to size x size")
    p.add_argument("--width", type=float, default=0.125)
    p.add_argument("--fc-width", type=int, default=512)
    p.add_argument("--epochs", type=int, default=None,
                   help="epochs of the FCN-32s stage (default 11 from random weights, 8 after --pretrain, whose "
                        "classifier takes about as long as 3 epochs: the same budget for both)")
    p.add_argument("--later-epochs", type=int, default=3, help="epochs of the 16s and 8s stages")
    p.add_argument("--lr", type=float, default=1e-3, help="Adam's rate (halved for the 16s and 8s stages)")
    p.add_argument("--crop", type=int, default=None, help="train on random crops of this size")
    p.add_argument("--pretrain", action="store_true", help="start from a classifier trained on crops first")
    p.add_argument("--pretrain-epochs", type=int, default=6)
    p.add_argument("--pretrain-crop", type=int, default=96, help="classifier crops (fc6 becomes crop/32 square)")
    p.add_argument("--pretrain-lr", type=float, default=1e-3, help="Adam's rate for the classifier")
    p.add_argument("--balanced", action="store_true", help="weight the loss by inverse class frequency")
    p.add_argument("--jobs", type=int, default=2, help="stages trained at once, one process each")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if args.epochs is None:
        args.epochs = 8 if args.pretrain else 11
    if not os.path.isdir(ROOT):
        sys.exit(f"SIFT Flow not found at {ROOT}; set MINIFCN_SIFTFLOW to a folder with images/, labels/, "
                 f"trainval.txt and test.txt")
    started = time.time()
    init, pretrain_minutes = None, 0.0
    if args.pretrain:
        config = PretrainConfig(data=ROOT, out=os.path.join(args.out, "pretrained", "classifier"),
                                dataset="siftflow", image_size=args.size, num_classes=len(SIFTFLOW_CLASSES),
                                width=args.width, fc_width=args.fc_width, crop=args.pretrain_crop,
                                epochs=args.pretrain_epochs, lr=args.pretrain_lr, train_split="trainval",
                                val_split="test", seed=args.seed)
        _, history = pretrain(config, log=print)
        init, pretrain_minutes = os.path.join(config.out, "classifier.npz"), history[-1]["seconds"] / 60
        print(f"classifier: crop accuracy {100 * history[-1]['val_accuracy']:.1f} % ({pretrain_minutes:.1f} min)")
    plan = stages(args, init)
    results = run_stages(plan, exclude_absent=True, jobs=args.jobs)
    os.makedirs(args.results, exist_ok=True)
    record = {"setup": {**{k: v for k, v in vars(args).items() if k not in ("out", "results")},
                        "stages": {s.name: dataclasses.asdict(s.config) for s in plan}},
              "pretrain_minutes": pretrain_minutes,
              "train_minutes_total": pretrain_minutes + sum(r["train_seconds"] for r in results.values()) / 60,
              "this_run_minutes": (time.time() - started) / 60, "results": results, "paper": PAPER,
              "trained_from_scratch_in_paper": FROM_SCRATCH, "classes": list(SIFTFLOW_CLASSES),
              "classes_absent_from_test": [SIFTFLOW_CLASSES[i] for i, iu in
                                           enumerate(results["fcn8s"]["class_iu"]) if iu is None or np.isnan(iu)]}
    name = f"siftflow-{variant(args)}"
    atomic.write_json(os.path.join(args.results, f"{name}.json"), record)
    test = SIFTFlow(ROOT, "test", args.size)
    shown = [s for s in plan if s.name in ("fcn32s", "fcn16s", "fcn8s")]
    rows = stage_predictions(shown, test, examples(test))
    save_predictions(os.path.join(args.results, f"{name}_predictions.npz"), rows)  # the figure, redrawable
    prediction_grid(rows, ["FCN-32s", "FCN-16s", "FCN-8s"],
                    os.path.join(args.results, f"{name}.png"),
                    f"SIFT Flow test photos ({variant(args)}): FCN-32s, 16s, 8s", SIFTFLOW_CLASSES)
    for stage_name, r in results.items():
        print(f"{stage_name:14} pixel acc {100 * r['pixel_acc']:.1f}  mean acc {100 * r['mean_acc']:.1f}  "
              f"mean IU {100 * r['mean_iu']:.1f}  f.w. IU {100 * r['fw_iu']:.1f}  ({r['train_seconds'] / 60:.1f} min)")
    print(f"{record['train_minutes_total']:.1f} min of training in all; "
          f"{record['this_run_minutes']:.1f} min for this run")
    publish_best(args.results)


def examples(test):
    """The test photos the figures show: five spread over the split (0, 49, ... 199 on the real set)."""
    return sorted(set(np.linspace(0, len(test) - 1, 5).astype(int).tolist()))


def publish_best(results_dir):
    """siftflow.json/.png: the variant whose FCN-8s reaches Pinheiro & Collobert's row (pixel acc >= 77.7 and
    mean acc >= 29.8, both: the balanced loss buys mean accuracy with pixel accuracy), else the higher mean IU.
    The variants are this script's and siftflow_imagenet.py's (from the Tiny ImageNet classifier)."""
    runs = {}
    for name in ("scratch", "pretrained", "scratch-balanced", "pretrained-balanced", "imagenet"):
        path = os.path.join(results_dir, f"siftflow-{name}.json")
        if os.path.exists(path):
            with open(path) as f:
                fcn8s = json.load(f)["results"].get("fcn8s")
            if fcn8s is not None:  # (siftflow_imagenet.py writes its record before every stage is done)
                runs[name] = fcn8s
    if not runs:
        return

    def merit(name):
        r = runs[name]
        return 100 * r["pixel_acc"] >= 77.7 and 100 * r["mean_acc"] >= 29.8, r["mean_iu"]

    best = max(runs, key=merit)
    for ext in (".json", ".png", "_predictions.npz", "_test_predictions.npz"):
        if os.path.exists(os.path.join(results_dir, f"siftflow-{best}{ext}")):
            with open(os.path.join(results_dir, f"siftflow-{best}{ext}"), "rb") as f:
                atomic.write_bytes(os.path.join(results_dir, f"siftflow{ext}"), f.read())
    print(f"siftflow.json is the {best} run")


if __name__ == "__main__":
    main()
