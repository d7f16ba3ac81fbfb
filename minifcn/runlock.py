"""One writer per run folder: a run holds an exclusive lock on its --out while it works.

Two runs writing into one folder would interleave their logs and rename each other's checkpoints.
``flock`` is released by the kernel when the holder exits, however it exits, so a crash never leaves
a folder locked; the lock file also records who holds it, so a refusal can name the holder and a
lock file left behind by a crashed run is recognised (and said) when the next run takes it; a run that
ends cleanly removes its lock file.
"""

import contextlib
import json
import os
import socket
import sys
import time

try:
    import fcntl
except ImportError:  # Windows: no advisory locks; runs are not protected there
    fcntl = None

LOCK_FILE = ".minifcn.lock"
_held = {}  # real path of a folder -> how many nested holds this process has on it


class FolderInUse(ValueError):
    """Another live process holds this run folder."""


@contextlib.contextmanager
def hold(folder, log=print):
    """Hold ``folder``'s lock for the block; raise FolderInUse naming the folder and the holder if taken.

    Re-entrant within a process (the demo holds its folder around the training that holds it too)."""
    key = os.path.realpath(folder)
    if fcntl is None or key in _held:
        _held[key] = _held.get(key, 0) + 1
        try:
            yield
        finally:
            _held[key] -= 1
            if not _held[key]:
                del _held[key]
        return
    path = os.path.join(folder, LOCK_FILE)
    fd = _lock(path, folder)
    try:
        stale = _read(fd)
        if stale:
            log(f"note: {folder} was still marked as used by {_describe(stale)}, which ended without releasing "
                f"it (a crash or kill); taking it over")
        record = json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%F %T"),
                             "command": " ".join(sys.argv)[:300]})
        os.ftruncate(fd, 0)
        os.pwrite(fd, record.encode(), 0)
        _held[key] = 1
        try:
            yield
        finally:
            del _held[key]
            os.unlink(path)  # released cleanly: no lock file is left (removed while still held, see _lock)
    finally:
        os.close(fd)  # closing the descriptor releases the lock


def _lock(path, folder):
    """A descriptor of ``path`` holding its exclusive flock. A holder removes the file when it is done, so a
    lock won on a file that is no longer at ``path`` is worthless: try again on the new one."""
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _describe(_read(fd))
            os.close(fd)
            raise FolderInUse(f"{folder} is in use by another run ({holder}); wait for it to end or choose "
                              f"another folder") from None
        try:
            same = os.path.samestat(os.fstat(fd), os.stat(path))
        except FileNotFoundError:
            same = False
        if same:
            return fd
        os.close(fd)


def _read(fd):
    try:
        return json.loads(os.pread(fd, 4096, 0).decode() or "null")
    except ValueError:
        return {"pid": "?"}


def _describe(holder):
    if not isinstance(holder, dict):
        return "an unknown process"
    return (f"pid {holder.get('pid', '?')} on {holder.get('host', '?')}, started {holder.get('started', '?')}: "
            f"{holder.get('command', '?')}")
