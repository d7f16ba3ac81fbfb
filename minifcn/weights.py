"""PyTorch checkpoints (.pth) read without PyTorch, and safely.

A .pth file is a pickle whose tensors point into raw storages kept beside it:

- the zip format (torch >= 1.6): ``<name>/data.pkl`` holds the pickle and
  ``<name>/data/<key>`` each storage's bytes (``<name>/byteorder`` says
  little- or big-endian);
- the legacy format (older files, such as pytorch-fcn's converted Caffe
  weights): five pickles in a row -- a magic number, a protocol version, a
  dict of system facts, the object itself, the sorted list of storage keys --
  and then, for each key, an int64 element count and the raw bytes.

In the object pickle a tensor is a call ``_rebuild_tensor_v2(storage, offset,
size, stride, ...)`` and a storage a "persistent id" ``('storage', type, key,
location, numel)``. So a tensor is ``as_strided(storage[offset:], size,
stride)``, and that is what ``load_pth`` returns, as an ndarray of its own.

Unpickling runs whatever callables a file names, so an unchecked .pth can run
any code (``os.system``...). The unpickler below resolves only the handful of
names a checkpoint needs, each to a stand-in made afresh for every load; any
other name is refused, naming it, before anything from the file runs. BUILD
(``__setstate__``/setattr on an object) is applied only to the dicts the file
itself made: nothing a file says can change the reader or a later load.

A file may also ask for memory: a storage viewed with stride 0, or one
tensor named a thousand times, unfolds far beyond the file's own size, and a
compressed zip record inflates. Records must be stored uncompressed (as
``torch.save`` writes them), a tensor named twice comes back as one shared
array, and all the arrays one load makes are held to ``max_bytes``.
"""

import collections
import io
import math
import os
import pickle
import struct
import tarfile
import zipfile

import numpy as np

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
MAX_EXPANDED = 1 << 28  # elements a stride-0 (expanded) tensor may unfold to: a file cannot ask for more memory
MAX_LOAD_BYTES = 2 << 30  # bytes of arrays one load may make (VGG16 is 0.55 GB); load_pth(max_bytes=...) raises it
LEGACY_PROTOCOL = 1001

STORAGE_DTYPES = {
    "FloatStorage": np.float32, "DoubleStorage": np.float64, "HalfStorage": np.float16,
    "BFloat16Storage": np.uint16,  # numpy has no bfloat16: read as bits, widened to float32 below
    "LongStorage": np.int64, "IntStorage": np.int32, "ShortStorage": np.int16, "CharStorage": np.int8,
    "ByteStorage": np.uint8, "BoolStorage": np.bool_,
    "ComplexFloatStorage": np.complex64, "ComplexDoubleStorage": np.complex128,
}


class StorageType:
    """What ``torch.FloatStorage`` & co. resolve to: just the element type; made per load, and frozen."""

    __slots__ = ("name", "dtype")

    def __init__(self, name):
        object.__setattr__(self, "name", name)
        object.__setattr__(self, "dtype", np.dtype(STORAGE_DTYPES[name]))

    def __setattr__(self, name, value):
        raise AttributeError(f"torch.{self.name} is read-only")

    def __repr__(self):
        return f"torch.{self.name}"


class Storage:
    """One flat buffer of a checkpoint (filled once its bytes are read), or a slice of another."""

    def __init__(self, storage_type, numel, base=None, offset=0):
        self.type_name, self.dtype = storage_type.name, storage_type.dtype
        self.numel, self.base, self.offset, self.array = numel, base, offset, None

    def data(self):
        if self.base is not None:
            return self.base.data()[self.offset: self.offset + self.numel]
        return self.array


class PendingTensor:
    """A tensor whose storage may not be read yet (legacy files keep the bytes after the pickle)."""

    __slots__ = ("storage", "offset", "size", "stride")

    def __init__(self, storage, offset, size, stride):
        self.storage, self.offset, self.size, self.stride = storage, offset, tuple(size), tuple(stride)

    def array(self, budget):
        """``as_strided(storage[offset:], size, stride)``, copied into an array of its own (``budget.take``s it)."""
        data = self.storage.data()
        if not all(isinstance(n, int) and n >= 0 for n in (self.offset, *self.size, *self.stride)):
            raise ValueError(f"tensor of size {self.size}, stride {self.stride}, offset {self.offset}: not a layout")
        if 0 in self.size:
            return np.empty(self.size, dtype=data.dtype)
        last = self.offset + sum((n - 1) * s for n, s in zip(self.size, self.stride))
        if last >= len(data):
            raise ValueError(f"tensor of size {self.size}, stride {self.stride} at offset {self.offset} "
                             f"reaches past its storage of {len(data)} elements")
        if math.prod(self.size) > max(len(data), MAX_EXPANDED):  # only stride-0 tensors reuse elements
            raise ValueError(f"tensor of size {self.size} repeats its {len(data)} stored elements more than "
                             f"{MAX_EXPANDED:,} times over")
        budget.take(math.prod(self.size) * data.itemsize, self.size)
        view = np.lib.stride_tricks.as_strided(data[self.offset:], self.size,
                                               [s * data.itemsize for s in self.stride], writeable=False)
        array = np.array(view, dtype=data.dtype.newbyteorder("="), order="C")  # native byte order
        if self.storage.type_name == "BFloat16Storage":  # bfloat16 is float32's upper half
            array = (array.astype(np.uint32) << 16).view(np.float32)
        return array


def _rebuild_tensor(storage, offset, size, stride, *_ignored):
    """torch._utils._rebuild_tensor(_v2): requires_grad, hooks and metadata do not matter to an array."""
    return PendingTensor(storage, offset, size, stride)


def _rebuild_tensor_v3(storage, offset, size, stride, requires_grad, hooks, dtype, *_ignored):
    return PendingTensor(storage, offset, size, stride)


def _rebuild_parameter(data, *_ignored):
    """An nn.Parameter is its tensor."""
    return data


def _rebuild_from_type(func, new_type, args, state):
    """A tensor subclass (nn.Parameter) rebuilt through its type: the tensor is all we keep."""
    return func(*args)


def _tensor_type(*_args):
    raise ValueError("a bare torch.Tensor/Parameter construction is not a checkpoint tensor")


def _scalar(dtype, data=None):
    """numpy's scalar reconstruction (pytorch-fcn checkpoints keep best_mean_iu as a numpy float)."""
    if dtype.hasobject:
        raise ValueError("object-dtype numpy scalars are not allowed in a checkpoint")
    return np.frombuffer(data if isinstance(data, bytes) else bytes(data, "latin1"), dtype=dtype)[0]


def _dtype(name, align=False, copy=False):
    """A dtype of this load's own: pickled dtypes get BUILD (``__setstate__``), which must never reach numpy's
    shared float32."""
    if not isinstance(name, str):
        raise ValueError(f"numpy dtype {name!r:.40}: expected a type name")
    dtype = np.dtype(name, align=bool(align), copy=True)
    if dtype.hasobject:
        raise ValueError(f"numpy dtype {name!r} holds Python objects: not allowed in a checkpoint")
    return dtype


def _encode(text, encoding="latin1"):
    """_codecs.encode: how protocol-2 pickles spell a bytes object."""
    return text.encode(encoding)


def allowed_globals():
    """The names a checkpoint may use, each resolved to a fresh stand-in (storage types are per load)."""
    return {
        ("collections", "OrderedDict"): collections.OrderedDict,
        ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
        ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
        ("torch._utils", "_rebuild_tensor_v3"): _rebuild_tensor_v3,
        ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
        ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
        ("torch._tensor", "_rebuild_from_type_v2"): _rebuild_from_type,
        ("torch", "Tensor"): _tensor_type,
        ("torch.nn.parameter", "Parameter"): _tensor_type,
        ("torch", "Size"): tuple,
        ("numpy.core.multiarray", "scalar"): _scalar,
        ("numpy._core.multiarray", "scalar"): _scalar,
        ("numpy", "dtype"): _dtype,
        ("_codecs", "encode"): _encode,
        **{("torch", name): StorageType(name) for name in STORAGE_DTYPES},
    }


ALLOWED = frozenset(allowed_globals())  # the names only; each load resolves them afresh


class Budget:
    """The bytes of arrays one load has made, held to ``limit`` (a file cannot ask for more than that)."""

    def __init__(self, path, limit):
        self.path, self.limit, self.used = path, limit, 0

    def take(self, nbytes, what):
        self.used += nbytes
        if self.used > self.limit:
            raise ValueError(f"{self.path}: its tensors would take more than {self.limit:,} bytes (at a tensor of "
                             f"size {tuple(what)}); a checkpoint is refused beyond that. If you trust the file, "
                             f"raise the limit: load_pth(path, max_bytes=N)")


class _Unpickler(pickle._Unpickler):
    """Resolves only ALLOWED names; storages come from ``storage(type, key, numel, view)``.

    The pure-Python unpickler (a checkpoint's pickle is small: the tensors' bytes lie beside it), so that
    BUILD can be checked opcode by opcode; the C one applies it to anything.
    """

    dispatch = dict(pickle._Unpickler.dispatch)

    def __init__(self, file, path, storage=None):
        super().__init__(file)
        self.path, self.storage, self.names = path, storage, allowed_globals()

    def find_class(self, module, name):
        try:
            return self.names[(module, name)]
        except KeyError:
            raise ValueError(f"{self.path}: refused to load the global {module}.{name}; a checkpoint needs only "
                             f"tensors, storages, numbers, strings and containers (nothing from the file was "
                             f"run). A pickled model object? Save its state_dict() instead.") from None

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and pid and pid[0] in ("storage", b"storage") and self.storage):
            raise pickle.UnpicklingError(f"unexpected persistent id {pid!r:.80}")
        kind, storage_type, key, _location, numel, *view = pid
        if not isinstance(storage_type, StorageType):
            raise ValueError(f"{self.path}: storage of unknown type {storage_type!r:.80}")
        return self.storage(storage_type, str(key), int(numel), view[0] if view else None)

    def load_build(self):
        """BUILD sets attributes: allowed only on an OrderedDict the file made (a state dict's ``_metadata``)
        and on a dtype, which ``_dtype`` made afresh for this load (numpy's own ``__setstate__``)."""
        state = self.stack.pop()
        target = self.stack[-1]
        if type(target) is collections.OrderedDict and isinstance(state, dict) and \
                all(isinstance(k, str) for k in state):
            vars(target).update(state)
        elif isinstance(target, np.dtype) and isinstance(state, tuple):
            target.__setstate__(state)
        else:
            raise ValueError(f"{self.path}: refused to set the state of {type(target).__name__} {target!r:.60} "
                             f"(pickle BUILD); a checkpoint sets state only on the dicts it makes")

    dispatch[pickle.BUILD[0]] = load_build


def _resolve(obj, budget, done=None):
    """Replace every PendingTensor in nested dicts, lists and tuples by its array.

    A tensor (or container) the pickle names twice is resolved once and shared, as torch.load would;
    a container that holds itself is refused.
    """
    done = {} if done is None else done
    key = id(obj)
    if key in done:
        if done[key] is _IN_PROGRESS:
            raise ValueError("a container holds itself")
        return done[key]
    if isinstance(obj, PendingTensor):
        done[key] = obj.array(budget)
    elif isinstance(obj, (dict, list)) or type(obj) is tuple:
        done[key] = _IN_PROGRESS
        if isinstance(obj, dict):
            for k, v in obj.items():
                obj[k] = _resolve(v, budget, done)
        elif isinstance(obj, list):
            obj[:] = [_resolve(v, budget, done) for v in obj]
        else:
            obj = tuple(_resolve(v, budget, done) for v in obj)
        done[key] = obj
    else:
        return obj
    return done[key]


_IN_PROGRESS = object()


def _new_storage(storages, storage_type, key, numel):
    if key not in storages:
        storages[key] = Storage(storage_type, numel)
    return storages[key]


def _read_stored(archive, name, path):
    """A record's bytes; compressed records are refused (torch.save stores them uncompressed, and a deflated
    record of 255 KB can inflate to gigabytes whatever its header says)."""
    info = archive.getinfo(name)
    if info.compress_type != zipfile.ZIP_STORED:
        raise ValueError(f"{path}: record {name} is compressed; torch.save stores every record uncompressed, and "
                         f"a compressed one could inflate without bound (refused)")
    return archive.read(name)


def _load_zip(path):
    with zipfile.ZipFile(path) as archive:
        pickles = [n for n in archive.namelist() if n.endswith("/data.pkl") and n.count("/") == 1]
        if not pickles:
            raise ValueError(f"{path} is a zip archive but not a PyTorch checkpoint (no <name>/data.pkl)")
        prefix = pickles[0][:-len("data.pkl")]
        names = set(archive.namelist())
        big = prefix + "byteorder" in names and _read_stored(archive, prefix + "byteorder", path).strip() == b"big"
        storages = {}

        def storage(storage_type, key, numel, _view):
            s = _new_storage(storages, storage_type, key, numel)
            if s.array is None:
                record = f"{prefix}data/{key}"
                if record not in names:
                    raise ValueError(f"{path}: storage {key} is missing from the archive")
                size = archive.getinfo(record).file_size  # checked before reading: a record cannot inflate
                if size != numel * s.dtype.itemsize:
                    raise ValueError(f"{path}: storage {key} holds {size} bytes, expected "
                                     f"{numel} x {s.dtype.itemsize}")
                raw = _read_stored(archive, record, path)
                s.array = np.frombuffer(raw, dtype=s.dtype.newbyteorder(">" if big else "<"))
            return s

        return _Unpickler(io.BytesIO(_read_stored(archive, pickles[0], path)), path, storage).load()


def _load_legacy(path):
    with open(path, "rb") as f:
        plain = _Unpickler(f, path)
        if plain.load() != LEGACY_MAGIC:
            raise ValueError(f"{path} is not a PyTorch checkpoint (no zip archive, no legacy magic number)")
        if plain.load() != LEGACY_PROTOCOL:
            raise ValueError(f"{path}: unknown legacy PyTorch protocol version")
        system = plain.load()
        order = "<" if not isinstance(system, dict) or system.get("little_endian", True) else ">"
        storages = {}

        def storage(storage_type, key, numel, view):
            root = _new_storage(storages, storage_type, key, numel)
            if view is None:
                return root
            _view_key, offset, size = view
            return Storage(storage_type, int(size), base=root, offset=int(offset))

        result = _Unpickler(f, path, storage).load()
        keys = _Unpickler(f, path).load()
        end = os.fstat(f.fileno()).st_size
        for key in keys:  # the bytes follow in this order: int64 count, then the elements
            s = storages.get(str(key))
            head = f.read(8)
            if s is None or len(head) != 8:
                raise ValueError(f"{path}: storage {key} is missing or truncated")
            numel = int(np.frombuffer(head, "<i8")[0])
            if not 0 <= numel * s.dtype.itemsize <= end - f.tell():  # never allocate more than the file holds
                raise ValueError(f"{path}: storage {key} claims {numel} elements, more than the file holds")
            raw = f.read(numel * s.dtype.itemsize)
            if len(raw) != numel * s.dtype.itemsize:
                raise ValueError(f"{path}: storage {key} is truncated")
            s.array = np.frombuffer(raw, dtype=s.dtype.newbyteorder(order))
        if any(s.array is None for s in storages.values()):
            raise ValueError(f"{path}: some storages have no data")
        return result


def load_pth(path, max_bytes=MAX_LOAD_BYTES):
    """A PyTorch checkpoint as the same structure with every tensor as a NumPy array; torch is never imported.

    Dicts, OrderedDicts, lists, tuples, numbers and strings come back as they were saved; an
    nn.Parameter becomes its array (one array however often the file names it); bfloat16 is widened to
    float32 (numpy has no bfloat16). The arrays made may total at most ``max_bytes`` (MAX_LOAD_BYTES,
    2 GiB, unless given). Raises ValueError naming the file for anything else: a disallowed pickle
    global, a BUILD on anything but the file's own dicts, a compressed record, a tensor past the limit.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path} not found")
    try:
        budget = Budget(path, max_bytes)
        if zipfile.is_zipfile(path):
            return _resolve(_load_zip(path), budget)
        if tarfile.is_tarfile(path):
            raise ValueError(f"{path} is in PyTorch's pre-2017 tar format, which minifcn does not read; "
                             f"re-save it with a recent torch.save")
        return _resolve(_load_legacy(path), budget)
    except (pickle.UnpicklingError, EOFError, zipfile.BadZipFile, IndexError, TypeError, KeyError,
            AttributeError, struct.error, OverflowError, MemoryError, RecursionError, UnicodeDecodeError) as err:
        raise ValueError(f"{path} is not a readable PyTorch checkpoint ({type(err).__name__}: {err})") from err
    except ValueError as err:
        raise err if path in str(err) else ValueError(f"{path}: {err}") from err


def state_dict_of(checkpoint):
    """The name -> array dict inside a loaded .pth: a state dict, or a training checkpoint's model_state_dict."""
    for key in ("model_state_dict", "state_dict", "model"):
        if isinstance(checkpoint, dict) and isinstance(checkpoint.get(key), dict):
            checkpoint = checkpoint[key]
            break
    if not (isinstance(checkpoint, dict) and checkpoint and
            all(isinstance(k, str) and isinstance(v, np.ndarray) for k, v in checkpoint.items())):
        raise ValueError("no state dict found (expected names mapped to tensors, or a checkpoint with "
                         "'model_state_dict')")
    return checkpoint


def kind_of(state):
    """'vgg16' for torchvision's VGG16 names, 'fcn' for pytorch-fcn's (minifcn's own) names."""
    if "features.0.weight" in state and "classifier.0.weight" in state:
        return "vgg16"
    if "conv1_1.weight" in state and "score_fr.weight" in state:
        return "fcn"
    raise ValueError(f"unrecognised state dict (first names: {sorted(state)[:4]}); expected torchvision's VGG16 "
                     f"(features.0.weight, classifier.0.weight) or an FCN (conv1_1.weight, score_fr.weight)")


def pretrained(name):
    """A classifier that ships with minifcn, in eval mode (``minifcn weights list`` names them):
    ``pretrained("vgg16-tinyimagenet")`` is the narrow VGG16 trained on Tiny ImageNet. See ``minifcn.zoo``
    and ``checkpoint.load_pretrained``."""
    import importlib  # at call time: checkpoint reads .pth files with this module
    return importlib.import_module(".checkpoint", __package__).load_pretrained(name)
