"""The shapes of a model's main weights, from its settings alone: arithmetic, not allocation.

A checkpoint names its settings (width, fc width, classes...) beside its arrays. Building the model
first would let a 3 KB file with ``width: 1e6`` ask for gigabytes; comparing these shapes with the
arrays the file really holds costs nothing, and once they agree the model is no bigger than the file.
"""

import math

from .vgg import VGG16_STAGES, scaled

MAX_PARAMETERS = 1 << 28  # 268 million: twice the paper's full-width FCN-8s (134 million)


def body_shapes(width):
    """conv1_1 ... conv5_3: (out, in, 3, 3) weights and (out,) biases, channels scaled by ``width``."""
    shapes, cin = {}, 3
    for stage, (channels, depth) in enumerate(VGG16_STAGES, start=1):
        cout = scaled(channels, width)
        for i in range(1, depth + 1):
            shapes[f"conv{stage}_{i}.weight"], shapes[f"conv{stage}_{i}.bias"] = (cout, cin, 3, 3), (cout,)
            cin = cout
    return shapes


def model_shapes(model, num_classes, width, fc_width, fc6_kernel=7, **_unused):
    """Weight shapes of an FCN ('fcn32s', 'fcn16s', 'fcn8s': body, fc6, fc7, score_fr) or of 'pixelwise'."""
    if model == "pixelwise":
        hidden = scaled(512, width)
        return {"conv1.weight": (hidden, 3, 1, 1), "conv2.weight": (hidden, hidden, 1, 1),
                "score.weight": (num_classes, hidden, 1, 1)}
    c5 = scaled(512, width)
    return {**body_shapes(width), "fc6.weight": (fc_width, c5, fc6_kernel, fc6_kernel),
            "fc7.weight": (fc_width, fc_width, 1, 1), "score_fr.weight": (num_classes, fc_width, 1, 1)}


def classifier_shapes(num_classes, width, fc_width, crop, head="flatten", batchnorm=False):
    """Weight shapes of a VGGClassifier on ``crop``-px inputs: fc6 reads the flattened pool5 map
    ("flatten" head) or one pool5 pixel ("average"); with ``batchnorm``, each bn's scale as well."""
    pool5 = crop
    for _ in range(5):
        pool5 = -(-pool5 // 2)
    window = pool5 if head == "flatten" else 1
    body = body_shapes(width)
    norms = {f"bn{name[4:-7]}.weight": shape[:1] for name, shape in body.items()
             if name.endswith(".weight")} if batchnorm else {}
    return {**body, **norms, "fc6.weight": (fc_width, scaled(512, width) * window ** 2),
            "fc7.weight": (fc_width, fc_width), "fc8.weight": (num_classes, fc_width)}


def mismatches(expected, arrays):
    """["name: (file shape) where the settings make (shape)", ...] for every expected weight that differs."""
    found = []
    for name, shape in expected.items():
        have = arrays.get(name)
        if have is None or tuple(have) != tuple(shape):
            found.append(f"{name} is {'missing' if have is None else tuple(have)} where the settings make "
                         f"{tuple(shape)}")
    return found


def check_size(shapes, limit=None):
    """Refuse settings whose model would hold more than ``limit`` (MAX_PARAMETERS) weights, before building it."""
    limit = MAX_PARAMETERS if limit is None else limit
    count = sum(math.prod(shape) for shape in shapes.values())
    if count > limit:
        raise ValueError(f"these settings make a model of {count:,} weights ({count * 4 / 2 ** 30:.1f} GiB in "
                         f"float32), more than the {limit:,} minifcn builds (twice the paper's FCN-8s): lower the "
                         f"width, fc-width or number of classes")
