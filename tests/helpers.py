"""What several test files share: the command line run in-process, a small dataset, and Tiny ImageNet's
layout in miniature."""

import shutil

import numpy as np
import pytest
from PIL import Image

from minifcn.cli import main
from minifcn.data import synthesize


def run(capsys, *argv):
    """(exit code, stderr) of the minifcn command, run in this process; argparse errors exit through SystemExit."""
    try:
        code = main([str(a) for a in argv])
    except SystemExit as stop:
        code = stop.code
    return code, capsys.readouterr().err


class Interrupt:
    """Stands in for a function and raises KeyboardInterrupt on its n-th call, as Ctrl-C there would."""

    def __init__(self, n, real):
        self.n, self.calls, self.real = n, 0, real

    def __call__(self, *args, **kwargs):
        self.calls += 1
        if self.calls == self.n:
            raise KeyboardInterrupt
        return self.real(*args, **kwargs)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """Six training and two validation images of 32 px, in VOC's layout."""
    return synthesize(str(tmp_path_factory.mktemp("voc")), 6, 2, 32, progress=False)


@pytest.fixture
def data(dataset, tmp_path):
    """A private copy, so a test may break it."""
    return shutil.copytree(dataset, tmp_path / "data")


WNIDS = ["n09999999", "n01443537", "n02124075"]  # deliberately not sorted: the file's order is the output order


@pytest.fixture
def tiny(tmp_path):
    """Tiny ImageNet's official layout in miniature: three classes, two photos each (one grey), three
    validation photos."""
    root = tmp_path / "tiny-imagenet-200"
    rng = np.random.default_rng(0)
    (root / "val" / "images").mkdir(parents=True)
    (root / "wnids.txt").write_text("\ufeff" + "\n".join(WNIDS) + "\n")
    (root / "words.txt").write_text("n01443537\tgoldfish, Carassius auratus\nn02124075\tEgyptian cat\n"
                                    "n00000001\tsomething else\n")
    for k, wnid in enumerate(WNIDS):
        folder = root / "train" / wnid / "images"
        folder.mkdir(parents=True)
        for j in range(2):
            mode = "L" if (k, j) == (1, 0) else "RGB"  # one grey photo, as the real set has
            shape = (64, 64) if mode == "L" else (64, 64, 3)
            Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode).save(folder / f"{wnid}_{j}.JPEG")
        (root / "train" / wnid / f"{wnid}_boxes.txt").write_text("")
    lines = []
    for i, wnid in enumerate([WNIDS[2], WNIDS[0], WNIDS[1]]):
        Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(root / "val" / "images" / f"val_{i}.JPEG")
        lines.append(f"val_{i}.JPEG\t{wnid}\t0\t0\t63\t63")
    (root / "val" / "val_annotations.txt").write_text("\n".join(lines) + "\n")
    return root
