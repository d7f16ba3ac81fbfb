"""Fetch and unpack a dataset archive: resumable, MD5-verified, extracted safely."""

import hashlib
import http.client
import os
import tarfile
import urllib.error
import zipfile
import urllib.request

from tqdm import tqdm

ARCHIVES = {
    "voc2012": dict(url="http://host.robots.ox.ac.uk/pascal/VOC/voc2012/VOCtrainval_11-May-2012.tar",
                    md5="6cd6e144f989b92b3379bac3b3de84fd", subdir=os.path.join("VOCdevkit", "VOC2012")),
    # the official Tiny ImageNet (200 classes; 248,100,043 bytes), as CS231n publishes it
    "tiny-imagenet": dict(url="http://cs231n.stanford.edu/tiny-imagenet-200.zip",
                          md5="90528d7ca1a48142e341f4ef8d21d0de", subdir="tiny-imagenet-200"),
}


def md5sum(path, chunk=1 << 20):
    digest = hashlib.md5()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()


def fetch(url, path, progress=True):
    """Download ``url`` to ``path`` through ``path + '.part'``, resuming the part when the server allows ranges.

    A connection that drops keeps the part for the next run to resume. A part that is already whole (a
    kill just before the rename) is taken as it is when the server answers "range not satisfiable" (416);
    the caller's MD5 check decides whether it is good. Network failures are one ConnectionError line.
    """
    part = path + ".part"
    have = os.path.getsize(part) if os.path.exists(part) else 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
    try:
        response = urllib.request.urlopen(request, timeout=60)
    except urllib.error.HTTPError as err:
        if err.code == 416 and have:  # nothing after the part: it is complete
            os.replace(part, path)
            return path
        raise ConnectionError(f"cannot download {url}: HTTP {err.code} {err.reason}") from None
    except OSError as err:  # URLError (no network, unknown host, refused), timeouts
        raise ConnectionError(f"cannot download {url} ({getattr(err, 'reason', err)}); check the network and "
                              f"run the same command again") from None
    with response:
        if have and response.status != 206:  # no range support: start over
            have = 0
        total = response.length + have if response.length is not None else None
        broken = None
        with open(part, "ab" if have else "wb") as f, tqdm(total=total, initial=have, unit="B", unit_scale=True,
                                                           desc=os.path.basename(path), disable=not progress) as bar:
            while True:
                try:
                    block = response.read(1 << 16)
                except (http.client.HTTPException, OSError) as err:  # a reset, a timeout, a short body
                    broken = err
                    break
                if not block:
                    break
                f.write(block)
                bar.update(len(block))
    got = os.path.getsize(part)
    if broken is not None or (total is not None and got < total):
        of = f"{total:,}" if total is not None else "an unknown number of"
        raise ConnectionError(f"the download of {url} stopped at {got:,} of {of} bytes"
                              f"{f' ({broken})' if broken else ''}; {part} is kept: run the same command again "
                              f"to resume")
    os.replace(part, path)
    return path


def safe_extract(archive, root):
    """Extract a tar or zip under ``root``, refusing members (or links) that would land outside it."""
    root = os.path.realpath(root)

    def inside(name, what):
        target = os.path.realpath(os.path.join(root, name))
        if os.path.commonpath([root, target]) != root:
            raise ValueError(f"archive {archive} {what} {name!r} would be written outside {root}")

    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as z:
            for info in z.infolist():
                inside(info.filename, "member")
                if (info.external_attr >> 16) & 0o170000 not in (0, 0o100000, 0o040000):  # a link or device
                    raise ValueError(f"archive {archive} member {info.filename!r} is not a file or folder")
            z.extractall(root)
        return
    with tarfile.open(archive) as tar:
        members = tar.getmembers()
        for m in members:
            inside(m.name, "member")
            if m.issym() or m.islnk():
                inside(os.path.join(os.path.dirname(m.name), m.linkname), "link")
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
