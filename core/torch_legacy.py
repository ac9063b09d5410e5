"""Read a legacy-format (pre-zip) PyTorch ``state_dict`` file without PyTorch.

The file is a sequence of pickles followed by raw storage bytes. Unpickling is
restricted to an allow-list (``OrderedDict`` and tensor rebuilding); any other
global raises :class:`UnsafeCheckpointError`, so no arbitrary code can run.
"""

from __future__ import annotations

import collections
import pickle
import struct
from pathlib import Path

import numpy as np

__all__ = ["UnsafeCheckpointError", "read_legacy_state_dict"]

_MAGIC = 0x1950A86A20F9469CFC6C
_DTYPES = {
    "FloatStorage": np.float32,
    "DoubleStorage": np.float64,
    "HalfStorage": np.float16,
    "LongStorage": np.int64,
    "IntStorage": np.int32,
    "ShortStorage": np.int16,
    "CharStorage": np.int8,
    "ByteStorage": np.uint8,
    "BoolStorage": np.bool_,
}


class UnsafeCheckpointError(ValueError):
    """The checkpoint is not a plain legacy state_dict or asks for a forbidden object."""


class _StorageType:
    def __init__(self, name: str):
        self.dtype = np.dtype(_DTYPES[name])


def _rebuild_tensor(storage, offset, size, stride, *_unused):
    return ("tensor", storage, offset, tuple(size), tuple(stride))


class _Unpickler(pickle.Unpickler):
    def __init__(self, f, dtypes: dict[str, np.dtype]):
        super().__init__(f)
        self._dtypes = dtypes

    def find_class(self, module, name):
        if (module, name) == ("collections", "OrderedDict"):
            return collections.OrderedDict
        if module == "torch._utils" and name in ("_rebuild_tensor_v2", "_rebuild_tensor"):
            return _rebuild_tensor
        if module == "torch" and name in _DTYPES:
            return _StorageType(name)
        raise UnsafeCheckpointError(f"Refusing to load {module}.{name} from a checkpoint.")

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == "storage"):
            raise UnsafeCheckpointError(f"Unexpected persistent id {pid!r}.")
        storage_type, key = pid[1], str(pid[2])
        if not isinstance(storage_type, _StorageType):
            raise UnsafeCheckpointError(f"Unexpected storage type {storage_type!r}.")
        self._dtypes[key] = storage_type.dtype
        return key


def read_legacy_state_dict(path: str | Path) -> dict[str, np.ndarray]:
    """Read a legacy PyTorch state_dict into numpy arrays.

    Args:
        path: Path of a ``.pth`` file written by ``torch.save`` in the legacy format.

    Returns:
        An ordered mapping from parameter name to a numpy array (a copy).

    Raises:
        UnsafeCheckpointError: The file is not in that format or needs forbidden globals.
    """
    dtypes: dict[str, np.dtype] = {}
    with open(path, "rb") as f:
        try:
            if _Unpickler(f, dtypes).load() != _MAGIC:
                raise UnsafeCheckpointError(f"{path} is not a legacy PyTorch checkpoint.")
            _Unpickler(f, dtypes).load()  # protocol version
            _Unpickler(f, dtypes).load()  # sys info
            tree = _Unpickler(f, dtypes).load()
            keys = _Unpickler(f, dtypes).load()
        except (pickle.UnpicklingError, EOFError) as exc:
            raise UnsafeCheckpointError(f"{path} is not a legacy PyTorch checkpoint: {exc}") from exc
        storages: dict[str, np.ndarray] = {}
        for key in map(str, keys):
            (count,) = struct.unpack("<q", f.read(8))
            dtype = dtypes[key]
            storages[key] = np.frombuffer(f.read(count * dtype.itemsize), dtype=dtype)
    out: dict[str, np.ndarray] = collections.OrderedDict()
    for name, value in tree.items():
        if not (isinstance(value, tuple) and value and value[0] == "tensor"):
            raise UnsafeCheckpointError(f"Entry {name!r} is not a tensor.")
        _, key, offset, size, stride = value
        storage = storages[key]
        itemsize = storage.dtype.itemsize
        out[name] = np.lib.stride_tricks.as_strided(
            storage[offset:], shape=size, strides=[s * itemsize for s in stride]
        ).copy()
    return out
