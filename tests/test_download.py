"""The downloader against a VOC-format tar served on 127.0.0.1 (no outside network)."""

import functools
import hashlib
import http.server
import io
import os
import tarfile
import threading

import pytest

from minifcn.data import VOCSegmentation
from minifcn.data.download import download, fetch, safe_extract
from test_data import make_voc

import numpy as np


@pytest.fixture
def server(tmp_path):
    """Serve tmp_path/www over HTTP on a free loopback port (range requests supported by the handler below)."""
    www = tmp_path / "www"
    www.mkdir()

    class RangeHandler(http.server.SimpleHTTPRequestHandler):
        def send_head(self):
            path = self.translate_path(self.path)
            if "Range" not in self.headers or not os.path.isfile(path):
                return super().send_head()
            start = int(self.headers["Range"].split("=")[1].split("-")[0])
            data = open(path, "rb").read()[start:]
            self.send_response(206)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            return io.BytesIO(data)

        def log_message(self, *args):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(RangeHandler, directory=str(www)))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield www, f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


def voc_tar(tmp_path, www):
    label = np.zeros((6, 8), np.uint8)
    label[2:4, 2:5] = 7
    make_voc(str(tmp_path / "src" / "VOCdevkit" / "VOC2012"), {"2007_000001": label})
    path = www / "voc.tar"
    with tarfile.open(path, "w") as tar:
        tar.add(tmp_path / "src" / "VOCdevkit", arcname="VOCdevkit")
    return path, hashlib.md5(path.read_bytes()).hexdigest()


def test_download_verifies_and_extracts(tmp_path, server):
    www, url = server
    _, md5 = voc_tar(tmp_path, www)
    root = download("voc2012", str(tmp_path / "data"), url=f"{url}/voc.tar", md5=md5, progress=False)
    image, label = VOCSegmentation(root)[0]
    assert label.shape == (6, 8) and (label == 7).sum() == 6


def test_download_resumes_a_partial_file(tmp_path, server):
    www, url = server
    path, _ = voc_tar(tmp_path, www)
    data = path.read_bytes()
    target = tmp_path / "got.tar"
    (tmp_path / "got.tar.part").write_bytes(data[:1000])
    fetch(f"{url}/voc.tar", str(target), progress=False)
    assert target.read_bytes() == data


def test_bad_checksum_is_refused(tmp_path, server):
    www, url = server
    voc_tar(tmp_path, www)
    with pytest.raises(ValueError, match="MD5 of .*voc.tar is .*expected 0+"):
        download("voc2012", str(tmp_path / "data"), url=f"{url}/voc.tar", md5="0" * 32, progress=False)


@pytest.mark.parametrize("name,link", [("../escape.txt", None), ("/abs/escape.txt", None), ("ok/link", "../../x")])
def test_members_escaping_the_root_are_refused(tmp_path, name, link):
    archive = tmp_path / "evil.tar"
    with tarfile.open(archive, "w") as tar:
        info = tarfile.TarInfo(name)
        if link:
            info.type, info.linkname = tarfile.SYMTYPE, link
            tar.addfile(info)
        else:
            info.size = 2
            tar.addfile(info, io.BytesIO(b"hi"))
    with pytest.raises(ValueError, match="outside"):
        safe_extract(str(archive), str(tmp_path / "root"))
    assert not (tmp_path / "escape.txt").exists()
