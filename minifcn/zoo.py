"""Weights that ship inside the package: classifiers trained here, to start an FCN from.

Each one is two files in ``minifcn/pretrained/``: ``NAME.npz``, a classifier checkpoint as ``minifcn
pretrain`` writes it (settings, weights, batch-norm statistics, the classes in output order), and
``NAME.json``, its provenance: the command that made it, the data, the epochs and minutes, and the
accuracy it reached on data it did not train on. They are read with the same checks as any file from
a stranger (``checkpoint.read_checkpoint``; ``minifcn.weights.pretrained`` loads them): a package can be
tampered with too.
"""

import json
import os

DIRECTORY = os.path.join(os.path.dirname(os.path.abspath(__file__)), "pretrained")


def available():
    """{name: provenance} of every shipped set of weights, by name."""
    found = {}
    if os.path.isdir(DIRECTORY):
        for entry in sorted(os.listdir(DIRECTORY)):
            name, ext = os.path.splitext(entry)
            if ext == ".npz":
                about = os.path.join(DIRECTORY, name + ".json")
                with open(about, encoding="utf-8") as f:
                    found[name] = json.load(f)
    return found


def path_of(name):
    """The .npz of shipped weights ``name``; an error lists the names that ship."""
    shipped = available()
    if name not in shipped:
        raise ValueError(f"no shipped weights named {name!r}; minifcn ships: {', '.join(shipped) or 'none'} "
                         f"('minifcn weights list')")
    return os.path.join(DIRECTORY, name + ".npz")

