"""What several test files share: the command line run in-process, and a small dataset."""

import shutil

import pytest

from minifcn.cli import main
from minifcn.data import synthesize


def run(capsys, *argv):
    """(exit code, stderr) of the minifcn command, run in this process; argparse errors exit through SystemExit."""
    try:
        code = main([str(a) for a in argv])
    except SystemExit as stop:
        code = stop.code
    return code, capsys.readouterr().err


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """Six training and two validation images of 32 px, in VOC's layout."""
    return synthesize(str(tmp_path_factory.mktemp("voc")), 6, 2, 32, progress=False)


@pytest.fixture
def data(dataset, tmp_path):
    """A private copy, so a test may break it."""
    return shutil.copytree(dataset, tmp_path / "data")
