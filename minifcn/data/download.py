"""Fetch and unpack a dataset archive: resumable, MD5-verified, extracted safely."""

import hashlib
import os
import tarfile
import urllib.request

from tqdm import tqdm

ARCHIVES = {
    "voc2012": dict(url="http://host.robots.ox.ac.uk/pascal/VOC/voc2012/VOCtrainval_11-May-2012.tar",
                    md5="6cd6e144f989b92b3379bac3b3de84fd", subdir=os.path.join("VOCdevkit", "VOC2012")),
}


def md5sum(path, chunk=1 << 20):
    digest = hashlib.md5()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()


def fetch(url, path, progress=True):
    """Download ``url`` to ``path``, resuming from ``path + '.part'`` when the server allows ranges."""
    part = path + ".part"
    have = os.path.getsize(part) if os.path.exists(part) else 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
    with urllib.request.urlopen(request, timeout=60) as response:
        if have and response.status != 206:  # no range support: start over
            have = 0
        total = response.length + have if response.length is not None else None
        with open(part, "ab" if have else "wb") as f, tqdm(total=total, initial=have, unit="B", unit_scale=True,
                                                           desc=os.path.basename(path), disable=not progress) as bar:
            for block in iter(lambda: response.read(1 << 16), b""):
                f.write(block)
                bar.update(len(block))
    os.replace(part, path)
    return path


def safe_extract(archive, root):
    """Extract a tar under ``root``, refusing members (or links) that would land outside it."""
    root = os.path.realpath(root)
    with tarfile.open(archive) as tar:
        members = tar.getmembers()
        for m in members:
            target = os.path.realpath(os.path.join(root, m.name))
            link = os.path.realpath(os.path.join(os.path.dirname(target), m.linkname)) if m.issym() or m.islnk() else root
            if os.path.commonpath([root, target]) != root or os.path.commonpath([root, link]) != root:
                raise ValueError(f"archive {archive} member {m.name!r} would be written outside {root}")
            if not (m.isfile() or m.isdir() or m.issym() or m.islnk()):
                raise ValueError(f"archive {archive} member {m.name!r} is a special file")
        tar.extractall(root, members=members)


def download(name, root, url=None, md5=None, progress=True):
    """Download and unpack archive ``name`` under ``root``; returns the dataset folder."""
    if name not in ARCHIVES:
        raise ValueError(f"unknown dataset {name!r}; known: {sorted(ARCHIVES)}")
    spec = dict(ARCHIVES[name])
    url, md5 = url or spec["url"], md5 or spec["md5"]
    os.makedirs(root, exist_ok=True)
    archive = os.path.join(root, os.path.basename(url))
    if not (os.path.exists(archive) and md5sum(archive) == md5):
        fetch(url, archive, progress)
        actual = md5sum(archive)
        if actual != md5:
            os.replace(archive, archive + ".bad")
            raise ValueError(f"MD5 of {archive} is {actual}, expected {md5}; kept as {archive}.bad")
    safe_extract(archive, root)
    return os.path.join(root, spec["subdir"])
