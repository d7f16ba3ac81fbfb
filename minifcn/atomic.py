"""Files that are either whole or absent: write to a name of the writer's own, then rename.

A run killed mid-write, or a full disk, must never leave a truncated checkpoint, mask or figure under
its final name, and two writers must never share a temporary file. ``os.replace`` is atomic on one
file system, so a reader sees the old file or the new one, never half of either. The small JSON files
minifcn keeps beside its outputs are read back with a bound (``read_json``): a file may still be a
stranger's.
"""

import glob
import json
import os
import secrets


def temporary_name(path):
    """``PATH.tmp-PID-RANDOM.EXT``: unique to this writer, beside ``path`` (same file system), same extension
    (np.savez and image writers go by it)."""
    return f"{path}.tmp-{os.getpid()}-{secrets.token_hex(4)}{os.path.splitext(path)[1]}"


def write_atomically(path, write):
    """Run ``write(temporary path)``, then rename the result to ``path``.

    On any failure the partial file is removed and an OSError names ``path`` (and whether an older
    version of it is still there, untouched).
    """
    tmp = temporary_name(path)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException as err:
        try:
            os.remove(tmp)
        except OSError:
            pass
        if isinstance(err, OSError):
            kept = f"; the previous {os.path.basename(path)} is intact" if os.path.exists(path) else ""
            raise OSError(err.errno, f"could not write {path} ({err.strerror or err}){kept}") from None
        raise
    return path


def write_bytes(path, data):
    """``data`` to ``path``, atomically; a short write (full disk, file-size limit) raises naming the file."""
    def write(tmp):
        with open(tmp, "wb") as f:
            f.write(data)
    return write_atomically(path, write)


def write_json(path, value):
    """``value`` as indented JSON to ``path``, atomically (minifcn's records, configs and provenance)."""
    return write_bytes(path, json.dumps(value, indent=1).encode())


def read_json(path, max_bytes):
    """The JSON value in ``path`` if the file is at most ``max_bytes``. A larger file, text that is not UTF-8
    JSON, or nesting too deep to decode (Python's decoder recurses) raise ValueError; a missing or unreadable
    file, OSError."""
    if os.path.getsize(path) > max_bytes:
        raise ValueError(f"larger than {max_bytes:,} bytes")
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except RecursionError:
        raise ValueError("nested too deeply to read") from None


def remove_leftovers(path, log=print):
    """Delete the temporary files of writers of ``path`` that are no longer running (a killed run's), saying so."""
    removed = []
    for leftover in glob.glob(glob.escape(path) + ".tmp-*"):
        pid = leftover[len(path) + len(".tmp-"):].split("-", 1)[0]
        if pid.isdigit() and not _running(int(pid)):
            try:
                os.remove(leftover)
                removed.append(leftover)
            except OSError:
                pass
    if removed:
        log(f"removed {len(removed)} partial file{'s' * (len(removed) > 1)} left by a run that was stopped "
            f"mid-write: {', '.join(map(os.path.basename, removed))}")
    return removed


def _running(pid):
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True
