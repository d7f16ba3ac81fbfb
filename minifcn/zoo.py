"""Weights that ship inside the package: classifiers trained here, to start an FCN from.

Each one is two files in ``minifcn/pretrained/``: ``NAME.npz``, a classifier checkpoint as ``minifcn
pretrain`` writes it (settings, weights, batch-norm statistics, the classes in output order), and
``NAME.json``, its provenance: the command that made it, the data, the epochs and minutes, and the
accuracy it reached on data it did not train on. They are read with the same checks as any file from
a stranger (``checkpoint.read_checkpoint``; ``minifcn.weights.pretrained`` loads them): a package can be
tampered with too.
"""

import os
import warnings

from .atomic import read_json

DIRECTORY = os.path.join(os.path.dirname(os.path.abspath(__file__)), "pretrained")
MAX_PROVENANCE_BYTES = 1 << 20  # a provenance file is a few hundred bytes; a larger one is not read


def available():
    """{name: provenance} of every shipped set of weights, by name.

    A set whose provenance is missing (a copy or a ship cut short), unreadable, larger than 1 MB or not a
    JSON object is left out with a warning naming the file: one damaged entry must not hide the others,
    nor stop every command that lists them."""
    found = {}
    if os.path.isdir(DIRECTORY):
        for entry in sorted(os.listdir(DIRECTORY)):
            name, ext = os.path.splitext(entry)
            if ext != ".npz":
                continue
            about = os.path.join(DIRECTORY, name + ".json")
            try:
                provenance = read_json(about, MAX_PROVENANCE_BYTES)
                if not isinstance(provenance, dict):
                    raise ValueError(f"a JSON {type(provenance).__name__}, not an object")
            except (OSError, ValueError) as err:
                reason = err.strerror if isinstance(err, OSError) and err.strerror else err
                warnings.warn(f"shipped weights {name!r} left out: {about}: {reason}", stacklevel=2)
                continue
            found[name] = provenance
    return found


def path_of(name):
    """The .npz of shipped weights ``name``; an error lists the names that ship."""
    shipped = available()
    if name not in shipped:
        raise ValueError(f"no shipped weights named {name!r}; minifcn ships: {', '.join(shipped) or 'none'} "
                         f"('minifcn weights list')")
    return os.path.join(DIRECTORY, name + ".npz")

