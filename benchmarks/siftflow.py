"""FCN-32s, 16s and 8s trained from scratch on SIFT Flow's real photographs, on a CPU.

Reads ``../shared/data/siftflow`` (or $MINIFCN_SIFTFLOW): 2,488 photos of
256x256 with 33 classes and the FCN paper's split. To fit an hour on 2 cores,
images and labels are resized to ``--size`` (default 128) for training and
testing. The means leave out classes absent from the 200 test images (cow,
desert, moon), as the paper does. Re-running resumes from the checkpoints.

    python benchmarks/siftflow.py          # writes benchmarks/results/siftflow.{json,png}
"""

import argparse
import json
import os
import sys
import time

import numpy as np

from minifcn.data import SIFTFLOW_CLASSES, SIFTFlow
from minifcn.experiment import run_stages, stage, stage_predictions
from minifcn.train import TrainConfig
from minifcn.viz import prediction_grid

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.environ.get("MINIFCN_SIFTFLOW", os.path.join(HERE, "..", "..", "shared", "data", "siftflow"))
PAPER = {"fcn16s": {"pixel_acc": 85.2, "mean_acc": 51.7, "mean_iu": 39.5, "fw_iu": 76.1}}  # FCN paper, Table 5


def stages(args):
    base = TrainConfig(data=ROOT, out="", dataset="siftflow", image_size=args.size, num_classes=len(SIFTFLOW_CLASSES),
                       width=args.width, fc_width=args.fc_width, input_mode="pad32", epochs=args.epochs,
                       batch_size=8, lr=args.lr, train_split="trainval", val_split="test", val_every=0,
                       seed=args.seed)

    later = dict(epochs=args.later_epochs, lr=args.lr / 2)
    return [stage(base, args.out, "fcn32s", model="fcn32s"),
            stage(base, args.out, "fcn16s", "fcn32s", model="fcn16s", **later),
            stage(base, args.out, "fcn8s", "fcn16s", model="fcn8s", **later)]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="runs/siftflow", help="checkpoints and per-stage results")
    p.add_argument("--results", default=os.path.join(HERE, "results"))
    p.add_argument("--size", type=int, default=128, help="images and labels are resized to size x size")
    p.add_argument("--width", type=float, default=0.125)
    p.add_argument("--fc-width", type=int, default=512)
    p.add_argument("--epochs", type=int, default=3, help="epochs of the FCN-32s stage")
    p.add_argument("--later-epochs", type=int, default=1, help="epochs of the 16s and 8s stages")
    p.add_argument("--lr", type=float, default=0.01)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if not os.path.isdir(ROOT):
        sys.exit(f"SIFT Flow not found at {ROOT}; set MINIFCN_SIFTFLOW to a folder with images/, labels/, "
                 f"trainval.txt and test.txt")
    started = time.time()
    plan = stages(args)
    results = run_stages(plan, exclude_absent=True)
    os.makedirs(args.results, exist_ok=True)
    test = SIFTFlow(ROOT, "test", args.size)
    record = {"setup": {k: v for k, v in vars(args).items() if k not in ("out", "results")},
              "train_minutes_total": sum(r["train_seconds"] for r in results.values()) / 60,
              "this_run_minutes": (time.time() - started) / 60, "results": results, "paper": PAPER,
              "classes": list(SIFTFLOW_CLASSES),
              "classes_absent_from_test": [SIFTFLOW_CLASSES[i] for i, iu in
                                           enumerate(results["fcn8s"]["class_iu"]) if iu is None or np.isnan(iu)]}
    with open(os.path.join(args.results, "siftflow.json"), "w") as f:
        json.dump(record, f, indent=1)
    rows = stage_predictions(plan, test, [0, 40, 80, 120, 160])
    prediction_grid(rows, ["FCN-32s", "FCN-16s", "FCN-8s"], os.path.join(args.results, "siftflow.png"),
                    "SIFT Flow test photos: FCN-32s, 16s, 8s trained from scratch")
    for name, r in results.items():
        print(f"{name:8} pixel acc {100 * r['pixel_acc']:.1f}  mean acc {100 * r['mean_acc']:.1f}  "
              f"mean IU {100 * r['mean_iu']:.1f}  f.w. IU {100 * r['fw_iu']:.1f}  ({r['train_seconds'] / 60:.1f} min)")


if __name__ == "__main__":
    main()
