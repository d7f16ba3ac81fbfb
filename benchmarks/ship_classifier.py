"""Put a finished ``minifcn pretrain`` run into the package as shipped weights, with its provenance.

    python benchmarks/ship_classifier.py RUN --name vgg16-tinyimagenet --command "minifcn pretrain ..."

Writes ``minifcn/pretrained/NAME.npz`` (the settings, the weights and batch-norm statistics, the classes
and the training history; no optimiser state) and ``NAME.json`` (what ``minifcn weights list`` shows).
The accuracy recorded is the run's own last validation pass, re-measured here from the written file.
"""

import argparse
import json
import os
import sys

import numpy as np

from minifcn import atomic, zoo
from minifcn.checkpoint import load_classifier, read_checkpoint, save_checkpoint
from minifcn.cpu import model_name
from minifcn.models.vgg import VGG16_STAGES, scaled
from minifcn.pretrain import accuracy, source



def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", help="the --out folder of a finished pretrain run")
    p.add_argument("--name", required=True)
    p.add_argument("--command", required=True, help="the command that made the run, as the user would type it")
    args = p.parse_args(argv)
    config, state = read_checkpoint(os.path.join(args.run, "classifier.npz"), config_class=None)
    meta = state["meta"]
    if meta["epoch"] != config.epochs:
        sys.exit(f"{args.run} stopped after epoch {meta['epoch']} of {config.epochs}; finish it first")
    classifier = load_classifier(config, state)
    validation = source(config, config.val_split)
    top1, top5 = accuracy(classifier, validation.validation())
    history = meta["history"]
    if not np.isclose(top1, history[-1]["val_accuracy"]):
        sys.exit(f"re-measured top-1 {top1} differs from the run's own {history[-1]['val_accuracy']}")
    os.makedirs(zoo.DIRECTORY, exist_ok=True)
    save_checkpoint(os.path.join(zoo.DIRECTORY, args.name + ".npz"), config, classifier,
                    meta={"kind": "classifier", "epoch": meta["epoch"], "step": meta["step"], "history": history,
                          "classes": meta["classes"], "names": meta["names"]})
    about = {
        "summary": f"VGG16 at width {config.width:g} ({', '.join(str(scaled(c, config.width)) for c, _ in VGG16_STAGES)} channels"
                   f"{', batch norm' if config.batchnorm else ''}), fc {config.fc_width}, {config.head} head, "
                   f"on {config.dataset} ({config.num_classes} classes, {config.crop}x{config.crop} RGB)",
        "dataset": config.dataset, "classes": config.num_classes, "width": config.width,
        "fc_width": config.fc_width, "input": f"{config.crop}x{config.crop} RGB, ImageNet mean and spread",
        "epochs": config.epochs, "minutes": history[-1]["seconds"] / 60, "top1": top1, "top5": top5,
        "evaluated_on": f"the {len(validation)} {config.val_split} photos",
        "machine": f"{model_name()}, {os.cpu_count()} cores", "command": args.command,
        "use": f"minifcn train --init {args.name} --fc6-kernel {config.fc6_kernel} --width {config.width:g} "
               f"--fc-width {config.fc_width} ...",
    }
    # whole or absent: a provenance cut short would leave these weights out of every listing (zoo.available)
    atomic.write_json(os.path.join(zoo.DIRECTORY, args.name + ".json"), about)
    print(json.dumps(about, indent=1))


if __name__ == "__main__":
    main()
