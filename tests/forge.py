"""Hand-built PyTorch files, opcode by opcode: what a hostile (or just odd) .pth may hold, without torch.

A pickle is a little stack program. These helpers return the bytes of its pieces (protocol 2), so a test
can write exactly the file it means: a tensor, a BUILD aimed at the reader's own classes, one tensor
named a thousand times, a compressed record.
"""

import struct
import zipfile

import numpy as np

MARK, STOP, TUPLE, REDUCE, BUILD, POP, SETITEMS, EMPTY_DICT, EMPTY_LIST, APPENDS = (
    b"(", b".", b"t", b"R", b"b", b"0", b"u", b"}", b"]", b"e")
NEWFALSE, BINPERSID = b"\x89", b"Q"


def glob(module, name):
    return b"c" + module.encode() + b"\n" + name.encode() + b"\n"


def text(s):
    raw = s.encode()
    return b"X" + struct.pack("<I", len(raw)) + raw


def integer(n):
    if -2 ** 31 <= n < 2 ** 31:
        return b"J" + struct.pack("<i", n)  # BININT
    raw = n.to_bytes((n.bit_length() + 8) // 8, "little", signed=True)
    return b"\x8a" + bytes([len(raw)]) + raw  # LONG1


def tuple_(*items):
    return MARK + b"".join(items) + TUPLE


def call(function, *args):
    return function + tuple_(*args) + REDUCE


def dict_(**items):
    return EMPTY_DICT + MARK + b"".join(text(k) + v for k, v in items.items()) + SETITEMS


def list_(*items):
    return EMPTY_LIST + MARK + b"".join(items) + APPENDS


def put(index):
    return b"q" + bytes([index])


def get(index):
    return b"h" + bytes([index])


def tensor(key, shape, stride=None, storage="FloatStorage", numel=None, offset=0):
    """``_rebuild_tensor_v2(storage key, offset, shape, stride, False, OrderedDict())``."""
    if stride is None:
        stride = [int(np.prod(shape[i + 1:])) for i in range(len(shape))]
    numel = int(np.prod(shape)) if numel is None else numel
    pid = tuple_(text("storage"), glob("torch", storage), text(key), text("cpu"), integer(numel)) + BINPERSID
    return call(glob("torch._utils", "_rebuild_tensor_v2"), pid, integer(offset),
                tuple_(*map(integer, shape)), tuple_(*map(integer, stride)), NEWFALSE,
                call(glob("collections", "OrderedDict")))


def program(body):
    return b"\x80\x02" + body + STOP


def write_zip(path, pickle_bytes, storages, compress=()):
    """A zip-format .pth: ``archive/data.pkl`` and one record per storage key; keys in ``compress`` deflated."""
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("archive/data.pkl", pickle_bytes)
        z.writestr("archive/byteorder", "little")
        for key, data in storages.items():
            z.writestr(f"archive/data/{key}", np.ascontiguousarray(data).tobytes(),
                       compress_type=zipfile.ZIP_DEFLATED if key in compress else zipfile.ZIP_STORED)
    return path


def state_dict_file(path, arrays):
    """A plain float32 state dict {name: array}, one storage each, as torch.save would write it."""
    body = dict_(**{name: tensor(str(i), a.shape) for i, (name, a) in enumerate(arrays.items())})
    return write_zip(path, program(body), {str(i): a.astype("<f4") for i, a in enumerate(arrays.values())})
