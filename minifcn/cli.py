"""The ``minifcn`` command: demo, train, pretrain, eval, predict, plot, summary, data, weights."""

import argparse
import dataclasses
import functools
import json
import math
import os
import re
import sys
import time
import warnings

import numpy as np

from . import atomic, backend, distributed, models, runlock, weights
from .data import VOC_CLASSES, VOCSegmentation, synthesize, verify
from .data.download import ARCHIVES, download
from .data.synth import PAINTERS
from .data.voc import read_image
from .config import MAX_CLASSES, PretrainConfig
from .metrics import format_scores
from .pretrain import pretrain
from .train import (TrainConfig, TrainingDiverged, evaluate, load_checkpoint, open_dataset, predict, save_checkpoint,
                    train)
from .viz import colorize, overlay, save_png, segmentation_figure, training_curves


MAX_PREDICT_PIXELS = 1 << 23  # 8.4 million pixels (4096 x 2048): predict's peak stays near 1.5 GB at width 0.125


def boolean(text):
    """true/false, yes/no, 1/0 (any case); anything else is an error, not a quiet false."""
    value = {"true": True, "yes": True, "1": True, "false": False, "no": False, "0": False}.get(text.lower())
    if value is None:
        raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")
    return value


def positive_int(text):
    """An integer >= 1: counts and sizes (a -1 would silently mean 'all but the last')."""
    if not re.fullmatch(r"\s*\+?\d+\s*", text) or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}")
    return int(text)


def count(text):
    """An integer >= 0."""
    return 0 if text.strip() == "0" else positive_int(text)


def finite_float(text):
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


OPTIONAL_TYPES = {"crop": int, "train_crop": int, "train_subset": int, "val_subset": int, "init": str,
                  "image_size": int, "learnable": boolean, "class_weights": str}

# What each setting does (the default is added to each line). train and pretrain share the names.
HELP = {
    "out": "the run folder: checkpoint, metrics.jsonl, curves (one run at a time holds it)",
    "dataset": "voc (a VOCdevkit/VOC2012 folder) or siftflow",
    "image_size": "siftflow: resize every image to this square size first",
    "model": "the net: fcn32s, fcn16s, fcn8s, or the pixelwise baseline",
    "width": "channel width relative to VGG16 (1 = 64 ... 512 channels; 0.125 trains on a CPU)",
    "fc_width": "channels of fc6 and fc7 (VGG16: 4096)",
    "input_mode": "pad100: the paper's 100-px pad and crops; pad32: pad to a multiple of 32 (cheaper)",
    "upsampling": "paper: final upsampler fixed bilinear, the 2x ones learned; learned: all learn; fixed: none",
    "learnable": "older switch for --upsampling: true = learned, false = fixed",
    "freeze_body": "train only the score layers (the paper's FCN-32s-fixed)",
    "preprocess": "input normalisation the weights expect: imagenet (RGB) or caffe (BGR minus mean)",
    "fc6_kernel": "fc6's window on pool5: 7 as in VGG16; crop/32 when starting from a 'pretrain' classifier",
    "num_classes": "classes scored, void excluded (VOC: 21, SIFT Flow: 33; at most 255)",
    "epochs": "passes over the training split",
    "batch_size": "images per step",
    "accum_steps": "batches whose gradients are summed before each step (a larger effective batch)",
    "lr": "learning rate (SGD: about 1e-2 for the paper's nets; Adam: about 1e-3)",
    "optimizer": "sgd (with momentum, as in the paper) or adam (AdamW)",
    "momentum": "SGD's momentum",
    "weight_decay": "L2 penalty on the weights (biases are not decayed)",
    "lr_policy": "poly: lr (1 - step/total)^0.9; fixed: constant",
    "warmup_steps": "steps over which the rate ramps up linearly from 0",
    "loss_reduction": "mean over valid pixels, or sum (the paper's unnormalised loss)",
    "class_weights": "balanced: weight each class by its inverse pixel share; sqrt, fourth-root, eighth-root: by that "
                     "root of it (capped, a pixel's mean weight 1); unset: equal",
    "crop": "train on random crops of this size (pixels); unset: whole images",
    "train_split": "the split list the net trains on",
    "val_split": "the split list validated on after each epoch",
    "train_subset": "use only the first N training images",
    "val_subset": "use only the first N validation images",
    "init": "start from these weights: a minifcn checkpoint or classifier (.npz), a PyTorch .pth, or the name "
            "of weights that ship (minifcn weights list)",
    "seed": "seed of every random draw (order, augmentation, dropout, initialisation)",
    "checkpoint_every": "steps between checkpoints (and one at every epoch's end)",
    "val_every": "epochs between validation passes (0: never during training)",
    "crops_per_image": "classification crops cut from each training image per epoch",
}
PRETRAIN_HELP = {**HELP,
                 "out": "the run folder: classifier.npz, metrics.jsonl, curves.png (one run at a time holds it)",
                 "dataset": "tiny-imagenet (photos of 200 classes: the paper's recipe), or crops of voc or siftflow",
                 "num_classes": "classes: those of the crops' segmentation labels, or the lines of wnids.txt",
                 "crop": "input size; flatten head: 32 times an odd number (the FCN then uses --fc6-kernel crop/32)",
                 "lr": "learning rate (linear warm-up, then poly decay)",
                 "epochs": "passes over the training images",
                 "batchnorm": "batch normalisation after every convolution (folded into it when an FCN starts)",
                 "head": "flatten: fc6 reads the whole pool5 map (VGG); average: fc layers per pool5 pixel, "
                         "scores averaged (FCN --fc6-kernel 1)",
                 "dropout": "dropout rate of fc6's and fc7's outputs",
                 "pad": "photos: reflect-pad this much and crop back at a random offset (augmentation)",
                 "train_crop": "photos, average head: train on random crops this size (cheaper steps), "
                               "validate on whole photos at --crop; unset: --crop",
                 "checkpoint_every": "steps between checkpoints (and one at every epoch's end)"}


def describe(field, help_texts):
    return f"{help_texts[field.name]} (default {field.default})"


def add_train_options(p):
    """One --flag per TrainConfig field, typed by its default."""
    for field in dataclasses.fields(TrainConfig):
        if field.name in ("data", "scale"):
            continue
        kind = OPTIONAL_TYPES.get(field.name, type(field.default))
        p.add_argument("--" + field.name.replace("_", "-"), type=boolean if kind is bool else kind,
                       default=field.default, help=describe(field, HELP))


def config_from(args):
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    return TrainConfig(**{k: v for k, v in vars(args).items() if k in names})


def use_threads(args):
    """Threads for this process: --threads, or under mpiexec this machine's cores shared among its ranks."""
    if args.threads is not None or distributed.launched_size() > 1:
        backend.set_num_threads(args.threads or distributed.default_threads())


def cmd_train(args):
    config = config_from(args)
    use_threads(args)
    _, metrics = train(config, resume=args.resume, overwrite=args.overwrite)
    if distributed.world().rank == 0:
        print(json.dumps(metrics))


def cmd_pretrain(args):
    names = {f.name for f in dataclasses.fields(PretrainConfig)}
    config = PretrainConfig(**{k: v for k, v in vars(args).items() if k in names})
    use_threads(args)
    _, history = pretrain(config, resume=True)
    if distributed.world().rank == 0:
        what = "photos" if config.dataset == "tiny-imagenet" else "crops"
        print(f"wrote {os.path.join(config.out, 'classifier.npz')}: top-1 {100 * history[-1]['val_accuracy']:.1f} %, "
              f"top-5 {100 * history[-1]['val_top5']:.1f} % on the validation {what}; start an FCN from it with "
              f"--init {os.path.join(config.out, 'classifier.npz')} --fc6-kernel {config.fc6_kernel}")


def cmd_eval(args):
    config, model, _ = load_checkpoint(args.checkpoint)
    dataset = open_dataset(dataclasses.replace(config, data=args.data or config.data), args.split, args.subset)
    if len(dataset.classes) != config.num_classes:
        raise ValueError(f"{args.checkpoint} scores {config.num_classes} classes but {dataset.root} has "
                         f"{len(dataset.classes)} ({config.dataset}); evaluate it on data labelled with its own "
                         f"classes")
    verify(dataset, "evaluation")  # an empty split or a broken file: one line, not "pixel acc nan"
    world = distributed.world()  # under mpiexec the ranks share the images
    result = evaluate(model, dataset, config.batch_size, config.num_classes, progress=True, world=world).scores()
    if world.rank == 0:
        print(format_scores(result, dataset.classes))
    return result


def cmd_predict(args):
    stems = {}
    for path in args.images:  # two inputs never share an output name
        stems.setdefault(os.path.splitext(os.path.basename(path))[0], []).append(path)
    clashes = {stem: paths for stem, paths in stems.items() if len(paths) > 1}
    if clashes:
        stem, paths = next(iter(clashes.items()))
        raise ValueError(f"{' and '.join(paths)} would both be written as {stem}_mask.png; predict them into "
                         f"different -o folders")
    if os.path.exists(args.output) and not os.path.isdir(args.output):
        raise ValueError(f"-o {args.output} is a file; -o names the folder the masks go into")
    _, model, _ = load_checkpoint(args.checkpoint)
    os.makedirs(args.output, exist_ok=True)
    with runlock.hold(args.output):  # another predict into this folder would mix two sets of masks
        for path in args.images:
            image = read_image(path, args.max_pixels)
            label = predict(model, image)
            stem = os.path.join(args.output, os.path.splitext(os.path.basename(path))[0])
            save_png(stem + "_mask.png", colorize(label))
            save_png(stem + "_overlay.png", overlay(image, label))
            print(f"wrote {stem}_mask.png and {stem}_overlay.png")


def cmd_summary(args):
    if args.num_classes > MAX_CLASSES:
        raise ValueError(f"--num-classes must be at most {MAX_CLASSES} (label maps are 8-bit, 255 marks void)")
    model = models.build(args.model, num_classes=args.num_classes, width=args.width, fc_width=args.fc_width,
                         input_mode=args.input_mode)
    s = models.summary(model, tuple(args.size))
    print(f"{s['model']}: {s['parameters']:,} parameters, {s['conv_layers']} conv layers, receptive field "
          f"{s['receptive_field']}, max stride {s['max_stride']}, coarse map {s['coarse_size']} "
          f"for input {tuple(args.size)}")


def cmd_data(args):
    if args.action == "synth":
        os.makedirs(args.root, exist_ok=True)
        with runlock.hold(args.root):  # two writers would mix two datasets in one folder
            lists = os.path.join(args.root, "ImageSets", "Segmentation")
            if not args.force and any(os.path.exists(os.path.join(lists, f"{s}.txt")) for s in ("train", "val")):
                raise ValueError(f"{args.root} already holds a dataset ({lists}); choose another --root, or add "
                                 f"--force to write over it")
            synthesize(args.root, args.train, args.val, args.size, args.seed, args.layouts, style=args.style)
            for split, n in (("train", args.train), ("val", args.val)):  # every file is there and opens
                if n:
                    verify(VOCSegmentation(args.root, split), f"written {split}")
        print(f"wrote a VOC-format dataset to {args.root}")
    else:
        print(f"{args.name} ready at {download(args.name, args.root)}")


def imported_model(state, model=None, num_classes=None, preprocess=None):
    """(config, model) for a PyTorch state dict: torchvision's VGG16, convolutionalized, or an FCN by its names.

    An FCN's kind, classes and widths are read off its tensors (score_pool3 -> FCN-8s, conv1_1's 64
    filters -> width 1). pytorch-fcn's FCNs were trained on Caffe's BGR input, torchvision's VGG16 on
    ImageNet-normalised RGB: that sets ``preprocess`` unless it is given.
    """
    if weights.kind_of(state) == "vgg16":
        config = TrainConfig(data="", model=model or "fcn8s", width=1.0, fc_width=4096, num_classes=num_classes or 21,
                             input_mode="pad100", preprocess=preprocess or "imagenet")
        return config, models.build(config.model, **config.model_config()).load_vgg16(state)
    kind = "fcn8s" if "score_pool3.weight" in state else "fcn16s" if "score_pool4.weight" in state else "fcn32s"
    if model and model != kind:
        raise ValueError(f"the file holds an {kind.upper()[:3]}-{kind[3:]} (its layers say so), not {model}")
    config = TrainConfig(data="", model=kind, width=state["conv1_1.weight"].shape[0] / 64,
                         fc_width=state["fc6.weight"].shape[0], num_classes=state["score_fr.weight"].shape[0],
                         input_mode="pad100", preprocess=preprocess or "caffe")
    if num_classes and num_classes != config.num_classes:
        raise ValueError(f"the file scores {config.num_classes} classes, not {num_classes}")
    return config, models.build(config.model, **config.model_config()).load_state_dict(state)


def cmd_weights_list(args):
    from .zoo import available
    shipped = available()
    if not shipped:
        print("no weights ship with this installation")
    for name, about in shipped.items():
        field = functools.partial(_provenance_field, about)
        print(f"{name}: {field('summary')}\n  top-1 {field('top1', 100, 1)} %, top-5 {field('top5', 100, 1)} % "
              f"on {field('evaluated_on')}; {field('epochs')} epochs, {field('minutes', 1, 0)} min on "
              f"{field('machine')}\n  made by: {field('command')}\n  start an FCN: {field('use')}")


def _provenance_field(about, key, scale=1, digits=None):
    """One field of shipped weights' provenance as text ("?" where it is missing, or is not a number where
    ``digits`` asks for one): a provenance may come from elsewhere."""
    value = about.get(key)
    if digits is None:
        return "?" if value is None else str(value)[:200]
    try:
        return "?" if isinstance(value, bool) else f"{scale * float(value):.{digits}f}"
    except (TypeError, ValueError, OverflowError):
        return "?"


def cmd_weights(args):
    atomic.remove_leftovers(args.out)  # a killed import's partial file
    if os.path.exists(args.out) and not args.force:
        raise ValueError(f"{args.out} exists; choose another --out or add --force to replace it")
    if args.num_classes is not None and args.num_classes > MAX_CLASSES:
        raise ValueError(f"--num-classes must be at most {MAX_CLASSES} (label maps are 8-bit, 255 marks void)")
    state = weights.state_dict_of(weights.load_pth(args.file))
    broken = [name for name, v in state.items() if v.dtype.kind == "f" and not np.isfinite(v).all()]
    if broken:
        raise ValueError(f"{args.file}: tensor {broken[0]} holds NaN or infinite values"
                         + (f" (and {len(broken) - 1} more)" if len(broken) > 1 else "") + "; nothing was written")
    config, model = imported_model(state, args.model, args.num_classes, args.preprocess)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    save_checkpoint(args.out, config, model, meta={"step": 0, "epoch": 0, "imported_from": os.path.abspath(args.file)})
    print(f"wrote {args.out}: {config.model} with {config.num_classes} classes, width {config.width:g}, "
          f"fc {config.fc_width}, {config.preprocess} preprocessing (from {weights.kind_of(state)} weights)")


def demo_data(args):
    """Where the demo writes (and then finds) its generated dataset."""
    return os.path.join(args.out, "data")


def demo_config(args, init=None):
    """The demo's recipe, chosen by measurement (README, "What the main job prints"): pad32 (no 100-px
    pad), Adam with warm-up, 64-px crops in batches of 16, 3,000 generated images; with --pretrain, from
    the classifier (fc6 3 x 3)."""
    return TrainConfig(data=demo_data(args), out=args.out, model="fcn8s", width=0.125, fc_width=512,
                       input_mode="pad32", optimizer="adam", lr=args.lr, warmup_steps=100, epochs=args.epochs,
                       batch_size=16, crop=64, checkpoint_every=50, init=init, fc6_kernel=3 if init else 7)


def demo_pretrain_config(args):
    """The classifier of --pretrain: 96-px crops of the images enlarged 1.25-2x (a 96-px image gives few
    crops otherwise), so fc6 becomes a 3 x 3 convolution."""
    return PretrainConfig(data=demo_data(args), out=os.path.join(args.out, "classifier"), width=0.125,
                          fc_width=512, crop=96, scale=(1.25, 2.0), crops_per_image=2, epochs=args.pretrain_epochs,
                          batch_size=32, lr=1e-3, warmup_steps=50)


def cmd_demo(args):
    """The main job: synthetic data -> train a small FCN-8s -> evaluate -> pictures of predictions and curves."""
    os.makedirs(args.out, exist_ok=True)
    with runlock.hold(args.out):  # one demo per folder, from its data to its last picture
        _demo(args)


def _demo(args):
    start = time.time()
    data = demo_data(args)
    if not os.path.exists(os.path.join(data, "ImageSets")):
        synthesize(data, args.train, args.val, args.size, seed=0)
    init = None
    if args.pretrain:  # the paper's recipe: a classifier first, convolutionalized into the FCN's body
        classifier = demo_pretrain_config(args)
        pretrain(classifier)
        init = os.path.join(classifier.out, "classifier.npz")
    config = demo_config(args, init)
    model, _ = train(config, resume=True)
    val = VOCSegmentation(config.data, "val")
    result = evaluate(model, val, 8, 21).scores()
    print(format_scores(result, VOC_CLASSES))
    rows = [(image, truth, predict(model, image)) for image, truth in (val[i] for i in range(min(5, len(val))))]
    figure = segmentation_figure(rows, VOC_CLASSES, os.path.join(args.out, "predictions.png"),
                                 "FCN-8s on held-out images of the demo's data")
    curves = training_curves(os.path.join(args.out, "metrics.jsonl"), os.path.join(args.out, "curves.png"))
    atomic.write_json(os.path.join(args.out, "metrics.json"), result)
    print(f"checkpoint {os.path.join(args.out, 'checkpoint.npz')}, metrics {os.path.join(args.out, 'metrics.json')}, "
          f"predictions {figure}, curves {curves}; {time.time() - start:.0f} s")


def cmd_plot(args):
    path = os.path.join(args.run, "curves.png")
    title = os.path.basename(args.run.rstrip(os.sep))
    print(f"wrote {training_curves(os.path.join(args.run, 'metrics.jsonl'), path, title)}")


def parser():
    root = argparse.ArgumentParser(prog="minifcn", description=__doc__)
    root.add_argument("--debug", action="store_true", help="show full tracebacks (also MINIFCN_DEBUG=1)")
    sub = root.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train an FCN on a VOC-format folder")
    p.add_argument("--data", required=True, help="a VOCdevkit/VOC2012-style folder (or SIFT Flow, --dataset)")
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.npz")
    p.add_argument("--overwrite", action="store_true", help="start again in an --out that holds a run")
    p.add_argument("--threads", type=positive_int, help=THREADS_HELP)
    add_train_options(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("pretrain", help="the paper's first step: a classifier, to start an FCN from")
    p.add_argument("--data", required=True, help="the tiny-imagenet-200 folder, a VOCdevkit/VOC2012-style folder "
                                                 "or SIFT Flow (see --dataset)")
    for field in dataclasses.fields(PretrainConfig):
        if field.name not in ("data", "scale"):
            kind = OPTIONAL_TYPES.get(field.name, type(field.default))
            p.add_argument("--" + field.name.replace("_", "-"), default=field.default,
                           type=boolean if kind is bool else kind, help=describe(field, PRETRAIN_HELP))
    p.add_argument("--scale", type=float, nargs=2, default=(1.0, 1.0),
                   help="range of the factor images are resized by before cropping (default 1 1)")
    p.add_argument("--threads", type=positive_int, help=THREADS_HELP)
    p.set_defaults(func=cmd_pretrain)

    p = sub.add_parser("eval", help="the four metrics and a per-class table")
    p.add_argument("--checkpoint", required=True, help="a checkpoint.npz from train or weights import")
    p.add_argument("--data", help="the dataset folder (default: the one the checkpoint was trained on)")
    p.add_argument("--split", default="val", help="the split list to score (default val)")
    p.add_argument("--subset", type=positive_int, help="score only the first N images of the split")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("predict", help="colourised masks and overlays for images")
    p.add_argument("images", nargs="+", help="image files (JPEG, PNG, ...)")
    p.add_argument("--checkpoint", required=True, help="a checkpoint.npz from train or weights import")
    p.add_argument("-o", "--output", default="predictions",
                   help="folder for NAME_mask.png and NAME_overlay.png (default predictions)")
    p.add_argument("--max-pixels", type=positive_int, default=MAX_PREDICT_PIXELS,
                   help=f"refuse larger images (default {MAX_PREDICT_PIXELS:,}: about 1.5 GB at width 0.125; "
                        f"memory grows with pixels times width)")
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("summary", help="the paper's Table 1 row for a model")
    p.add_argument("--model", default="fcn8s", choices=sorted(models.MODELS), help="the net (default fcn8s)")
    p.add_argument("--width", type=finite_float, default=1.0, help="channel width relative to VGG16 (default 1)")
    p.add_argument("--fc-width", type=positive_int, default=4096, help="channels of fc6 and fc7 (default 4096)")
    p.add_argument("--num-classes", type=positive_int, default=21, help="classes scored (default 21)")
    p.add_argument("--input-mode", default="pad100", choices=models.fcn.INPUT_MODES,
                   help="pad100 (the paper's) or pad32 (default pad100)")
    p.add_argument("--size", type=positive_int, nargs=2, default=(500, 500), metavar=("H", "W"),
                   help="input height and width in pixels (default 500 500)")
    p.set_defaults(func=cmd_summary)

    p = sub.add_parser("data", help="make or fetch a dataset")
    actions = p.add_subparsers(dest="action", required=True)
    s = actions.add_parser("synth", help="write the synthetic VOC-format dataset")
    s.add_argument("--root", required=True, help="the folder to write (VOCdevkit/VOC2012 layout)")
    s.add_argument("--train", type=positive_int, default=200, help="training images (default 200)")
    s.add_argument("--val", type=count, default=50, help="validation images (default 50)")
    s.add_argument("--size", type=positive_int, default=96, help="image side in pixels, 8 to 4096 (default 96)")
    s.add_argument("--seed", type=int, default=0, help="seed of the drawing (default 0)")
    s.add_argument("--layouts", help="a folder of real VOC palette PNGs to paint instead of drawn shapes")
    s.add_argument("--style", default="plain", choices=sorted(PAINTERS),
                   help="plain: overlapping class colours; texture: classes differ only by texture; "
                        "tinted: texture plus a class hue shared by two classes")
    s.add_argument("--force", action="store_true", help="write over a dataset already in --root")
    d = actions.add_parser("download", help="fetch and unpack an official archive (MD5-checked, resumable)")
    d.add_argument("name", choices=sorted(ARCHIVES), help="voc2012 (VOCdevkit) or tiny-imagenet (the official zip)")
    d.add_argument("--root", required=True, help="the folder to download and unpack into")
    p.set_defaults(func=cmd_data)

    p = sub.add_parser("weights", help="the weights that ship with minifcn; bring in weights from a PyTorch file")
    actions = p.add_subparsers(dest="action", required=True)
    w = actions.add_parser("list", help="the classifiers that ship with minifcn, with their provenance")
    w.set_defaults(func=cmd_weights_list)
    w = actions.add_parser("import", help="a .pth (torchvision VGG16, pytorch-fcn FCN) -> a minifcn checkpoint")
    w.add_argument("file", help="a PyTorch .pth, zip or legacy format (read without torch)")
    w.add_argument("--out", required=True, help="the checkpoint .npz to write")
    w.add_argument("--model", choices=["fcn32s", "fcn16s", "fcn8s"],
                   help="for VGG16: the FCN to build on it (default fcn8s); for an FCN file: a check")
    w.add_argument("--num-classes", type=positive_int,
                   help="for VGG16: classes of the new score layers (default 21)")
    w.add_argument("--preprocess", choices=["imagenet", "caffe"],
                   help="input normalisation the weights expect (default: imagenet for VGG16, caffe for an FCN)")
    w.add_argument("--force", action="store_true", help="replace --out if it exists")
    p.set_defaults(func=cmd_weights)

    p = sub.add_parser("demo", help="the main job: synth data, train FCN-8s, evaluate, draw predictions")
    p.add_argument("--out", default="runs/demo", help="the run folder (default runs/demo)")
    p.add_argument("--epochs", type=positive_int, default=5, help="training epochs (default 5)")
    p.add_argument("--lr", type=finite_float, default=3e-3,
                   help="Adam's rate (after 100 warm-up steps, poly decay; default 0.003)")
    p.add_argument("--train", type=positive_int, default=3000, help="generated training images (default 3000)")
    p.add_argument("--val", type=positive_int, default=50, help="generated validation images (default 50)")
    p.add_argument("--size", type=positive_int, default=96, help="side of the generated images (default 96)")
    p.add_argument("--pretrain", action="store_true", help="start from a classifier trained on crops first")
    p.add_argument("--pretrain-epochs", type=positive_int, default=2,
                   help="the classifier's epochs with --pretrain (default 2)")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("plot", help="draw RUN/curves.png: train loss and validation mean IU per epoch")
    p.add_argument("run", help="a run's --out folder (it holds metrics.jsonl)")
    p.set_defaults(func=cmd_plot)
    return root


THREADS_HELP = ("threads of this process (default: all cores; under mpiexec, this machine's cores shared among its "
                "ranks)")
DEBUG_VALUES = {"": False, "0": False, "false": False, "no": False, "off": False,
                "1": True, "true": True, "yes": True, "on": True}


def main(argv=None):
    """Run a command; a bad input or a failed file operation is one line on stderr and exit code 2."""
    args = parser().parse_args(argv)  # --help and usage errors end here, whatever the environment holds
    debug_text = os.environ.get("MINIFCN_DEBUG", "").strip()
    problems = backend.environment_errors()
    if debug_text.lower() not in DEBUG_VALUES:
        problems.append(f"MINIFCN_DEBUG={debug_text!r} must be 1/true/yes/on or 0/false/no/off")
    if problems:
        print(f"minifcn: error: {'; '.join(problems)}", file=sys.stderr)
        return 2
    debug = args.debug or DEBUG_VALUES[debug_text.lower()]
    try:
        with warnings.catch_warnings():
            warnings.showwarning = _one_line_warning
            args.func(args)
    except (OSError, ValueError, TrainingDiverged, distributed.DriftError, distributed.MPIUnavailable) as err:
        if debug:
            raise
        plain = isinstance(err, OSError) and err.strerror and err.filename is None  # our own message, no "[Errno]"
        message = err.strerror if plain else err
        if distributed.launched_size() == 1 or isinstance(err, distributed.MPIUnavailable):
            print(f"minifcn: error: {message}", file=sys.stderr)
            return 2
        stop_every_rank(f"{message}")
    except KeyboardInterrupt:
        return 130
    except Exception as err:  # mpi4py raises its own errors when a peer rank is gone
        if distributed.launched_size() > 1 and type(err).__module__.startswith("mpi4py") and not debug:
            stop_every_rank(f"lost contact with another rank ({str(err).strip()[:200]}); the last checkpoint is "
                            f"kept: continue with --resume")
        raise
    return 0


def stop_every_rank(message):
    """One rank failed: say which and why, in one line, and end every rank (MPI_Abort), so that none waits
    forever for it in a collective. Rank 0 speaks at once; another rank first gives rank 0 two seconds,
    since an error every rank meets (a bad setting, a folder in use) is then said once, by rank 0."""
    world = distributed.world()
    if world.rank != 0:
        time.sleep(2)
    print(f"minifcn: error: rank {world.rank} of {world.size}: {message}", file=sys.stderr, flush=True)
    time.sleep(0.5)  # the launcher forwards the line before the abort tears the job down
    world.abort(2)


def _one_line_warning(message, category, filename, lineno, file=None, line=None):
    print(f"minifcn: warning: {message}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
