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
        """Ranges as real servers answer them: 206 with the rest, or 416 when the range starts at the end.
        A file named drop-* is cut off halfway, as a dropped connection would."""

        def send_head(self):
            path = self.translate_path(self.path)
            if not os.path.isfile(path):
                return super().send_head()
            data = open(path, "rb").read()
            start = int(self.headers["Range"].split("=")[1].split("-")[0]) if "Range" in self.headers else 0
            if start >= len(data) > 0:
                self.send_error(416, "Range Not Satisfiable")
                return None
            self.send_response(206 if start else 200)
            self.send_header("Content-Length", str(len(data) - start))
            self.end_headers()
            body = data[start:]
            if os.path.basename(path).startswith("drop-"):
                body = body[:len(body) // 2]
                self.close_connection = True
            return io.BytesIO(body)

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


def test_a_whole_part_left_by_a_kill_before_the_rename_is_checked_not_refetched(tmp_path, server):
    www, url = server
    path, md5 = voc_tar(tmp_path, www)
    root = tmp_path / "data"
    root.mkdir()
    (root / "voc.tar.part").write_bytes(path.read_bytes())  # every byte arrived; the rename did not happen
    assert VOCSegmentation(download("voc2012", str(root), url=f"{url}/voc.tar", md5=md5, progress=False))[0]


def test_a_dropped_connection_keeps_the_part_and_the_rerun_resumes(tmp_path, server):
    www, url = server
    path, md5 = voc_tar(tmp_path, www)
    (www / "drop-voc.tar").write_bytes(path.read_bytes())
    root = tmp_path / "data"
    with pytest.raises(ConnectionError, match=r"stopped at [\d,]+ of [\d,]+ bytes.*run the same command again"):
        download("voc2012", str(root), url=f"{url}/drop-voc.tar", md5=md5, progress=False)
    part = root / "drop-voc.tar.part"
    assert 0 < part.stat().st_size < path.stat().st_size  # kept, not reported as an MD5 mismatch
    (www / "drop-voc.tar").write_bytes(path.read_bytes())
    os.rename(www / "drop-voc.tar", www / "voc-again.tar")
    os.rename(part, root / "voc-again.tar.part")
    download("voc2012", str(root), url=f"{url}/voc-again.tar", md5=md5, progress=False)  # resumes from the part
    assert (root / "voc-again.tar").read_bytes() == path.read_bytes()


def test_no_network_is_one_line(tmp_path, capsys, monkeypatch):
    import socket
    from minifcn.cli import main
    from minifcn.data import download as downloader
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setitem(downloader.ARCHIVES, "voc2012", dict(downloader.ARCHIVES["voc2012"],
                                                              url=f"http://127.0.0.1:{port}/voc.tar"))
    assert main(["data", "download", "voc2012", "--root", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "cannot download" in err and "refused" in err and len(err.strip().splitlines()) == 1


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


def test_tiny_imagenet_comes_as_its_official_zip_and_is_read_in_its_layout(tmp_path, server, tiny):
    """The zip route: the fixture's tiny-imagenet-200 folder zipped, served, cut off halfway, resumed."""
    import shutil
    import zipfile
    from minifcn.data import TinyImageNet
    www, url = server
    archive = www / "drop-tiny-imagenet-200.zip"
    with zipfile.ZipFile(archive, "w") as z:
        for path in sorted(tiny.rglob("*")):
            z.write(path, path.relative_to(tiny.parent).as_posix())
    md5 = hashlib.md5(archive.read_bytes()).hexdigest()
    root = tmp_path / "data"
    with pytest.raises(ConnectionError, match="run the same command again to resume"):
        download("tiny-imagenet", str(root), url=f"{url}/{archive.name}", md5=md5, progress=False)
    shutil.copyfile(archive, www / "tiny-imagenet-200.zip")
    os.replace(root / f"{archive.name}.part", root / "tiny-imagenet-200.zip.part")
    folder = download("tiny-imagenet", str(root), url=f"{url}/tiny-imagenet-200.zip", md5=md5, progress=False)
    assert folder == str(root / "tiny-imagenet-200")
    assert TinyImageNet(folder).classes == TinyImageNet(tiny).classes and len(TinyImageNet(folder, "val")) == 3


@pytest.mark.parametrize("name,mode", [("../escape.txt", 0o100644), ("/abs/escape.txt", 0o100644),
                                       ("ok/link", 0o120777)])
def test_zip_members_escaping_the_root_or_linking_are_refused(tmp_path, name, mode):
    import zipfile
    archive = tmp_path / "evil.zip"
    with zipfile.ZipFile(archive, "w") as z:
        info = zipfile.ZipInfo(name)
        info.external_attr = mode << 16
        z.writestr(info, b"../../x" if mode == 0o120777 else b"hi")
    with pytest.raises(ValueError, match="outside|not a file or folder"):
        safe_extract(str(archive), str(tmp_path / "root"))
    assert not (tmp_path / "escape.txt").exists() and not (tmp_path / "root" / "ok").exists()
