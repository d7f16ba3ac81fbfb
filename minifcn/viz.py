"""Pictures of segmentations: colourised label maps, overlays, side-by-side panels."""

import numpy as np
from PIL import Image

from .atomic import write_atomically
from .data.voc import IGNORE, voc_colormap


def colorize(label):
    """Class indices -> VOC colours (void drawn in the VOC cream colour)."""
    rgb = voc_colormap()[np.asarray(label)]
    rgb[np.asarray(label) == IGNORE] = (224, 224, 192)
    return rgb


def overlay(image, label, alpha=0.5):
    """The photo with its labels blended over it (background left clear)."""
    rgb = colorize(label).astype(np.float32)
    mask = (np.asarray(label) != 0)[..., None]
    mixed = np.where(mask, (1 - alpha) * image + alpha * rgb, image)
    return mixed.astype(np.uint8)


def panel(rows, gap=4, scale=2):
    """A grid image from rows of equally tall uint8 RGB tiles, enlarged ``scale`` times (nearest)."""
    height = max(tile.shape[0] for row in rows for tile in row)
    lines = []
    for row in rows:
        tiles = []
        for tile in row:
            padded = np.full((height, tile.shape[1], 3), 255, np.uint8)
            padded[:tile.shape[0]] = tile
            tiles += [padded, np.full((height, gap, 3), 255, np.uint8)]
        lines.append(np.concatenate(tiles[:-1], axis=1))
    width = max(line.shape[1] for line in lines)
    out = []
    for line in lines:
        out += [np.pad(line, ((0, 0), (0, width - line.shape[1]), (0, 0)), constant_values=255),
                np.full((gap, width, 3), 255, np.uint8)]
    grid = np.concatenate(out[:-1], axis=0)
    return np.asarray(Image.fromarray(grid).resize((grid.shape[1] * scale, grid.shape[0] * scale), Image.NEAREST))


def save_png(path, rgb):
    """Write an RGB (or grey) uint8 image as PNG, atomically: a killed run leaves no half-written file."""
    image = Image.fromarray(np.asarray(rgb, dtype=np.uint8))
    return write_atomically(path, lambda tmp: image.save(tmp, format="PNG"))


def prediction_grid(rows, names, path, title=None, class_names=None):
    """A titled figure: one row per image -- photo, each model's prediction (in ``names`` order), truth.

    ``rows``: (image, label, {name: prediction}) triples, as ``experiment.stage_predictions`` makes.
    With ``class_names``, a legend names the colour of every class the figure shows.
    """
    import matplotlib.pyplot as plt  # imported here: the rest of minifcn does not need matplotlib

    fig, axes = plt.subplots(len(rows), len(names) + 2, figsize=(2.2 * (len(names) + 2), 2.0 * len(rows) + 0.6),
                             squeeze=False)
    draw_predictions(axes, rows, names)
    if title:
        fig.suptitle(title, fontsize=12)
    bottom = 0
    if class_names is not None:
        maps = [m for _, truth, preds in rows for m in (truth, *preds.values())]
        bottom = class_legend(fig, maps, class_names, columns=len(names) + 3)
    fig.tight_layout(rect=(0, bottom, 1, 1))
    write_atomically(path, lambda tmp: fig.savefig(tmp, dpi=100))
    plt.close(fig)
    return path


def class_legend(fig, label_maps, class_names, columns=4):
    """A legend under ``fig`` of the classes that occur in ``label_maps``, in their ``colorize`` colours.

    Returns the fraction of the figure's height it takes (for ``tight_layout(rect=...)``).
    """
    from matplotlib.patches import Patch

    shown = sorted(set().union(*(np.unique(m).tolist() for m in label_maps)) - {IGNORE})
    colours = voc_colormap()
    handles = [Patch(color=colours[k] / 255, label=class_names[k]) for k in shown]
    handles.append(Patch(color=colours[IGNORE] / 255, label="void (ignored)"))  # the colour colorize gives void
    fig.legend(handles=handles, loc="lower center", ncol=columns, fontsize=9, frameon=False)
    rows = -(-len(handles) // columns)
    return min(0.4, (0.3 + 0.22 * rows) / fig.get_figheight())


def draw_predictions(axes, rows, names, fontsize=11):
    """Fill a (rows x models+2) grid of matplotlib axes: photo, each prediction, ground truth."""
    columns = ["image"] + list(names) + ["ground truth"]
    for r, (image, label, preds) in enumerate(rows):
        tiles = [image] + [colorize(p) for p in preds.values()] + [colorize(label)]
        for c, tile in enumerate(tiles):
            ax = axes[r][c]
            ax.imshow(tile, interpolation="nearest")
            ax.set_xticks([]), ax.set_yticks([])
            if r == 0:
                ax.set_title(columns[c], fontsize=fontsize)


def read_log(path):
    """The epochs of a training log (metrics.jsonl), in order.

    A half-written last line (a run stopped while appending it) is skipped with a warning, as resume
    does; a bad line anywhere else is an error naming the file and line."""
    import json
    import warnings
    with open(path) as f:
        lines = [(n, line) for n, line in enumerate(f, start=1) if line.strip()]
    records = []
    for i, (number, line) in enumerate(lines):
        try:
            record = json.loads(line)
            if not isinstance(record, dict) or "epoch" not in record:
                raise ValueError("not an epoch record")
        except ValueError as err:
            if i == len(lines) - 1 and not line.endswith("\n"):
                warnings.warn(f"{path}, line {number}: skipped a half-written last line", RuntimeWarning,
                              stacklevel=2)
                break
            raise ValueError(f"{path}, line {number} is not an epoch record ({err})") from None
        records.append(record)
    return records


def training_curves(log_path, path, title=None):
    """Train loss and validation mean IU per epoch, side by side, from a run's metrics.jsonl."""
    import matplotlib.pyplot as plt

    log = read_log(log_path)
    if not log:
        raise ValueError(f"{log_path} holds no finished epoch yet")
    epochs = [e["epoch"] for e in log]
    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.4))
    left.plot(epochs, [e["loss"] for e in log], "o-", color="tab:red")
    left.set(xlabel="epoch", ylabel="train loss (last step)", title="training loss")
    validated = [(e["epoch"], 100 * e["mean_iu"]) for e in log if "mean_iu" in e]
    if validated:
        right.plot(*zip(*validated), "o-", color="tab:blue")
        right.set_ylim(0, 100)
    else:
        right.text(0.5, 0.5, "no validation pass in this run", ha="center", va="center", transform=right.transAxes)
    right.set(xlabel="epoch", ylabel="mean IU (%)", title="validation mean IU")
    for ax in (left, right):
        ax.grid(alpha=0.3)
        ax.xaxis.get_major_locator().set_params(integer=True)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    write_atomically(path, lambda tmp: fig.savefig(tmp, dpi=100))
    plt.close(fig)
    return path


def segmentation_figure(rows, class_names, path, title=None):
    """Rows of (image, truth, prediction) with a legend of the classes shown, in VOC colours."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(rows), 3, figsize=(7.2, 2.4 * len(rows) + 0.8), squeeze=False)
    for r, (image, truth, pred) in enumerate(rows):
        for c, (tile, name) in enumerate(((image, "image"), (colorize(truth), "ground truth"),
                                          (colorize(pred), "prediction"))):
            axes[r][c].imshow(tile, interpolation="nearest")
            axes[r][c].set_xticks([]), axes[r][c].set_yticks([])
            if r == 0:
                axes[r][c].set_title(name)
    bottom = class_legend(fig, [m for _, truth, pred in rows for m in (truth, pred)], class_names)
    if title:
        fig.suptitle(title)
    fig.tight_layout(rect=(0, bottom, 1, 1))
    write_atomically(path, lambda tmp: fig.savefig(tmp, dpi=100))
    plt.close(fig)
    return path


def matrix_plot(ax, m, title=None, fmt="{:g}", cmap="Blues", fontsize=9):
    """A small matrix drawn as coloured cells with its values written in (for the arithmetic figures)."""
    m = np.atleast_2d(np.asarray(m, dtype=float))
    ax.imshow(m, cmap=cmap, vmin=min(m.min(), 0), vmax=max(m.max(), 1e-9))
    if m.size <= 400:
        for (r, c), v in np.ndenumerate(m):
            ax.text(c, r, fmt.format(round(v, 4) + 0.0), ha="center", va="center", fontsize=fontsize,
                    color="white" if v > 0.6 * m.max() and v > 0 else "black")
    ax.set_xticks(np.arange(m.shape[1])), ax.set_yticks(np.arange(m.shape[0]))
    ax.tick_params(labelsize=7, length=0)
    if title:
        ax.set_title(title, fontsize=10)
