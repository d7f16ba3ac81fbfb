"""The paper's Table 2 (FCN-32s-fixed, 32s, 16s, 8s) on real VOC object outlines, on a CPU.

Data: the real VOC 2012 label maps (``../shared/data/voc2012-masks`` or
$MINIFCN_VOC_MASKS), painted with the synthetic generator's "tinted" style:
every class is a texture (stripes, checks or dots at its own period and
angle, jittered per instance) in two colours, one drawn at random and one of
the class's hue; two classes share each hue, and the cluttered background's
flat blobs take any hue, so colour alone cannot decide a pixel. Train layouts come from VOC's ``train``
list, evaluation from its ``val`` list.

Stages, as in the paper's Table 2: FCN-32s-fixed ("only the last layer is
fine-tuned": the body frozen, the score layer learning), FCN-32s, FCN-16s from
that FCN-32s, FCN-8s from that FCN-16s; plus a pixelwise baseline of 1x1
convolutions and a control, FCN-32s trained on for as many epochs as FCN-16s
and FCN-8s together (so the skips are not credited with what longer training
does). Upsampling follows section 4.3: the final upsampler is fixed bilinear,
the intermediate ones start bilinear and learn.

The paper's nets all start from VGG16 trained on ImageNet. Here every FCN
starts from minifcn's narrow VGG16 classifier, trained first on crops of the
painted training images (``minifcn.pretrain``) and convolutionalized; without
that, a "fixed" body would be random. ``--scratch`` trains every stage from
random weights instead. All stages use Adam (in an early, texture-only version,
SGD never left the "all background" plateau). Re-running resumes.

    python benchmarks/table2.py            # writes benchmarks/results/table2.{json,png}, table2_predictions.npz

Stages run in ``--jobs`` processes (default 2), each starting as soon as the
stage it grows from is done, so the independent chains share the cores.
"""

import argparse
import os
import sys
import time

import numpy as np

from minifcn import atomic
from minifcn.config import PretrainConfig
from minifcn.data import VOC_CLASSES, VOCSegmentation, synthesize
from minifcn.experiment import run_stages, save_predictions, stage, stage_predictions
from minifcn.pretrain import pretrain
from minifcn.train import TrainConfig
from minifcn.viz import prediction_grid

HERE = os.path.dirname(os.path.abspath(__file__))
MASKS = os.environ.get("MINIFCN_VOC_MASKS", os.path.join(HERE, "..", "..", "shared", "data", "voc2012-masks"))
PAPER = {  # FCN paper, Table 2 (a subset of VOC2011 segval, ImageNet-initialised VGG16)
    "fcn32s-fixed": {"pixel_acc": 83.0, "mean_acc": 59.7, "mean_iu": 45.4, "fw_iu": 72.0},
    "fcn32s": {"pixel_acc": 89.1, "mean_acc": 73.3, "mean_iu": 59.4, "fw_iu": 81.4},
    "fcn16s": {"pixel_acc": 90.0, "mean_acc": 75.7, "mean_iu": 62.4, "fw_iu": 83.0},
    "fcn8s": {"pixel_acc": 90.3, "mean_acc": 75.9, "mean_iu": 62.7, "fw_iu": 83.2},
}


def stages(args, init=None):
    root = os.path.join(args.out, "scratch" if args.scratch else "pretrained")
    base = TrainConfig(data=data_folder(args), out="", width=args.width, fc_width=args.fc_width,
                       input_mode="pad32", epochs=args.epochs, batch_size=8, optimizer="adam", lr=args.lr,
                       warmup_steps=100, val_every=0, seed=args.seed, init=init,
                       fc6_kernel=args.pretrain_crop // 32 if init else 7)
    later = dict(epochs=args.later_epochs, lr=args.lr / 2, init=None)
    return [stage(base, root, "pixelwise", model="pixelwise", init=None),
            stage(base, root, "fcn32s-fixed", model="fcn32s", freeze_body=True),
            stage(base, root, "fcn32s", model="fcn32s"),
            stage(base, root, "fcn16s", "fcn32s", model="fcn16s", **later),
            stage(base, root, "fcn8s", "fcn16s", model="fcn8s", **later),
            # the control: FCN-32s trained on for as long as FCN-16s and FCN-8s were, so that the skips'
            # gain is not mistaken for the gain of training longer
            stage(base, root, "fcn32s-longer", "fcn32s", model="fcn32s",
                  **{**later, "epochs": 2 * args.later_epochs})]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="runs/table2", help="data, checkpoints and per-stage results")
    p.add_argument("--results", default=os.path.join(HERE, "results"))
    p.add_argument("--size", type=int, default=128, help="longer image side in pixels")
    p.add_argument("--train", type=int, default=1461, help="train layouts (VOC train list has 1,461)")
    p.add_argument("--val", type=int, default=1449, help="val layouts (VOC val list has 1,449)")
    p.add_argument("--width", type=float, default=0.125)
    p.add_argument("--fc-width", type=int, default=512)
    p.add_argument("--style", default="tinted", choices=["texture", "tinted"], help="how the masks are painted")
    p.add_argument("--epochs", type=int, default=10, help="epochs of the 32s stages and the baseline")
    p.add_argument("--later-epochs", type=int, default=4, help="epochs of the 16s and 8s stages")
    p.add_argument("--lr", type=float, default=1e-3, help="Adam's rate (halved for the 16s and 8s stages)")
    p.add_argument("--scratch", action="store_true", help="train every stage from random weights (no classifier)")
    p.add_argument("--pretrain-epochs", type=int, default=6, help="epochs of the classifier on crops")
    p.add_argument("--pretrain-crop", type=int, default=96, help="classifier crops (fc6 becomes crop/32 square)")
    p.add_argument("--band", type=int, default=3, help="boundary band half-width in pixels")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--stages", help="comma-separated stages to run now; the results are written once all are done")
    p.add_argument("--jobs", type=int, default=2, help="stages trained at once, one process each")
    args = p.parse_args(argv)
    if not os.path.isdir(MASKS):
        sys.exit(f"VOC masks not found at {MASKS}; set MINIFCN_VOC_MASKS to a VOC2012 folder with "
                 f"SegmentationClass/ and ImageSets/Segmentation/")
    started = time.time()
    data = data_folder(args)
    if not os.path.exists(os.path.join(data, "ImageSets", "Segmentation", "val.txt")):
        synthesize(data, args.train, args.val, args.size, args.seed,
                   layouts=os.path.join(MASKS, "SegmentationClass"), style=args.style)
    init, pretrain_minutes = None, 0.0
    if not args.scratch:
        config = PretrainConfig(data=data, out=os.path.join(args.out, "pretrained", "classifier"), width=args.width,
                                fc_width=args.fc_width, crop=args.pretrain_crop, scale=(1.5, 2.5),
                                epochs=args.pretrain_epochs, lr=args.lr, seed=args.seed)
        _, history = pretrain(config, log=print)
        init, pretrain_minutes = os.path.join(config.out, "classifier.npz"), history[-1]["seconds"] / 60
        print(f"classifier: crop accuracy {100 * history[-1]['val_accuracy']:.1f} % ({pretrain_minutes:.1f} min)")
    plan = stages(args, init)
    if args.stages:
        run_stages(plan, band_width=args.band, only=args.stages.split(","), jobs=args.jobs)
        return
    results = run_stages(plan, band_width=args.band, jobs=args.jobs)
    os.makedirs(args.results, exist_ok=True)
    record = {"setup": {k: v for k, v in vars(args).items() if k not in ("out", "results")},
              "pretrain_minutes": pretrain_minutes,
              "train_minutes_total": pretrain_minutes + sum(r["train_seconds"] for r in results.values()) / 60,
              "this_run_minutes": (time.time() - started) / 60,
              "results": results, "paper": PAPER, "classes": list(VOC_CLASSES)}
    atomic.write_json(os.path.join(args.results, "table2.json"), record)
    val = VOCSegmentation(data, "val")
    shown = [s for s in plan if s.name in ("fcn32s", "fcn16s", "fcn8s")]
    rows = stage_predictions(shown, val, pick_examples(val, 5))
    save_predictions(os.path.join(args.results, "table2_predictions.npz"), rows)  # redrawn by tutorial 06
    prediction_grid(rows, ["FCN-32s", "FCN-16s", "FCN-8s"],
                    os.path.join(args.results, "table2.png"),
                    f"Real VOC outlines, painted ({args.style}): FCN-32s, 16s, 8s on val images", VOC_CLASSES)
    print(table(results))


def data_folder(args):
    """One painted dataset per (style, size, counts, seed): a changed setting never reuses stale images."""
    return os.path.join(args.out, f"data-{args.style}-{args.size}px-{args.train}-{args.val}-seed{args.seed}")


def pick_examples(dataset, n):
    """Val images with a fair amount of object, spread over the list (deterministic)."""
    chosen = []
    for i in range(0, len(dataset), 7):
        label = dataset[i][1]
        if 0.15 < np.mean((label != 0) & (label != 255)) < 0.6:
            chosen.append(i)
        if len(chosen) == n:
            break
    return chosen


def table(results):
    lines = [f"{'':14} {'pixel acc':>9} {'mean acc':>9} {'mean IU':>8} {'f.w. IU':>8} {'boundary IU':>12} {'min':>5}"]
    for name, r in results.items():
        lines.append(f"{name:14} {100 * r['pixel_acc']:9.1f} {100 * r['mean_acc']:9.1f} {100 * r['mean_iu']:8.1f} "
                     f"{100 * r['fw_iu']:8.1f} {100 * r['boundary']['mean_iu']:12.1f} {r['train_seconds'] / 60:5.1f}")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
