"""Binary encoding of state trees: dicts, lists, scalars, strings and numpy arrays.

Layout: ``b"CREST1"``, a little-endian uint32 header length, a JSON header, then the raw
little-endian bytes of every array in header order. Arrays appear in the header as
``{"__array__": [offset, dtype, shape]}``. No pickle: a state blob read back from a store can
only ever produce data, never code.

:func:`split` cuts a tree's large arrays into *pieces* of fixed row ranges, each packed alone
and named by its content, and :func:`join` puts them back: so a store can keep a large state
in bounded values, and rewrite only the pieces that changed since it last stored them (an
array that does not change, such as the labels, keeps its names).

The walks below are module functions that take what they collect as arguments: a nested
function that calls itself is a reference cycle, which would keep every buffer it collected
(hundreds of MB for a large job's snapshot) alive until the garbage collector's next full pass.
"""

from __future__ import annotations

import hashlib
import json
import struct
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np

_MAGIC = b"CREST1"
_ARRAY = "__array__"
_PIECES = "__pieces__"


def _little_endian(array: np.ndarray) -> np.ndarray:
    """``array`` C-contiguous and little-endian: itself when it already is (no copy)."""
    dtype = array.dtype.newbyteorder("<") if array.dtype.byteorder == ">" else array.dtype
    if array.dtype == dtype and array.flags.c_contiguous:
        return array
    return array.astype(dtype, order="C")


def _encode(node: Any, buffers: list[memoryview], offset: list[int]) -> Any:
    """``node``'s header entry; its arrays' bytes appended to ``buffers`` (views)."""
    if isinstance(node, np.ndarray):
        array = _little_endian(node)
        buffers.append(array.reshape(-1).view(np.uint8).data)
        entry = {_ARRAY: [offset[0], array.dtype.str, list(array.shape)]}
        offset[0] += array.nbytes
        return entry
    if isinstance(node, dict):
        return {str(key): _encode(value, buffers, offset) for key, value in node.items()}
    if isinstance(node, list | tuple):
        return [_encode(value, buffers, offset) for value in node]
    if isinstance(node, np.generic):
        return node.item()
    if node is None or isinstance(node, str | int | float | bool):
        return node
    raise TypeError(f"cannot encode {type(node).__name__}")


def _chunks(tree: Any) -> list[bytes | memoryview]:
    """:func:`pack`'s output in consecutive parts, the arrays' bytes as views (no copies)."""
    buffers: list[memoryview] = []
    header = json.dumps(_encode(tree, buffers, [0]), separators=(",", ":"), allow_nan=True)
    raw = header.encode()
    return [_MAGIC, struct.pack("<I", len(raw)), raw, *buffers]


def pack(tree: Any) -> bytes:
    """Encode a tree of dict/list/tuple/str/int/float/bool/None/ndarray."""
    return b"".join(_chunks(tree))


def _decode(node: Any, data: memoryview, copy: bool) -> Any:
    if isinstance(node, dict):
        if _ARRAY in node and len(node) == 1:
            offset, dtype, shape = node[_ARRAY]
            count = int(np.prod(shape)) if shape else 1
            array = np.frombuffer(data, np.dtype(dtype), count, offset).reshape(shape)
            return array.copy() if copy else array
        return {key: _decode(value, data, copy) for key, value in node.items()}
    if isinstance(node, list):
        return [_decode(value, data, copy) for value in node]
    return node


def _unpack(blob: bytes, copy: bool) -> Any:
    if not blob.startswith(_MAGIC):
        raise ValueError("not a crest state blob")
    (length,) = struct.unpack_from("<I", blob, len(_MAGIC))
    start = len(_MAGIC) + 4
    header = json.loads(blob[start : start + length])
    return _decode(header, memoryview(blob)[start + length :], copy)


def unpack(blob: bytes) -> Any:
    """Decode :func:`pack`'s output; arrays are writable copies."""
    return _unpack(blob, copy=True)


class Pieces(Mapping[str, bytes]):
    """:func:`split`'s pieces: name -> packed piece, each packed only when it is read.

    A piece is a view of the array it was cut from, so the tree must not change until the
    pieces are read (the coordinator holds the job's lock until the store has them): a store
    that already holds a piece by its name never packs it, and one that writes pieces one at a
    time holds one packed piece at a time, not a copy of the whole state.
    """

    def __init__(self) -> None:
        self._views: dict[str, np.ndarray] = {}

    def _add(self, rows: np.ndarray) -> str:
        digest = hashlib.blake2b(digest_size=16)
        for chunk in _chunks(rows):  # the hash of pack(rows), without packing them
            digest.update(chunk)
        name = digest.hexdigest()
        self._views[name] = rows
        return name

    def __getitem__(self, name: str) -> bytes:
        return pack(self._views[name])

    def __iter__(self) -> Iterator[str]:
        return iter(self._views)

    def __len__(self) -> int:
        return len(self._views)

    def size(self, name: str) -> int:
        """Bytes of the packed piece ``name`` (without packing it)."""
        return sum(map(len, _chunks(self._views[name])))  # memoryviews of bytes


def _cut(node: Any, piece_bytes: int, pieces: Pieces) -> Any:
    if isinstance(node, np.ndarray) and node.ndim and node.nbytes > piece_bytes:
        array = _little_endian(node)  # rows of it are contiguous views
        rows = max(1, piece_bytes // max(1, array.nbytes // len(array)))
        names = [pieces._add(array[start : start + rows]) for start in range(0, len(array), rows)]
        return {_PIECES: names}
    if isinstance(node, dict):
        return {key: _cut(value, piece_bytes, pieces) for key, value in node.items()}
    if isinstance(node, list | tuple):
        return [_cut(value, piece_bytes, pieces) for value in node]
    return node


def split(tree: Any, piece_bytes: int) -> tuple[Any, Pieces]:
    """``tree`` with every array over ``piece_bytes`` replaced by the names of its pieces
    (consecutive rows, about ``piece_bytes`` each, packed), and the pieces by name.

    A piece's name is a hash of its packed content, so equal rows always give the same name.
    The pieces are packed when read (see :class:`Pieces`).
    """
    pieces = Pieces()
    return _cut(tree, piece_bytes, pieces), pieces


def _glue(node: Any, pieces: Mapping[str, bytes]) -> Any:
    if isinstance(node, dict):
        if _PIECES in node and len(node) == 1:  # one copy: the pieces are read in place
            return np.concatenate([_unpack(pieces[name], copy=False) for name in node[_PIECES]])
        return {key: _glue(value, pieces) for key, value in node.items()}
    if isinstance(node, list):
        return [_glue(value, pieces) for value in node]
    return node


def join(tree: Any, pieces: Mapping[str, bytes]) -> Any:
    """Undo :func:`split`: ``tree`` with its arrays put together from ``pieces``.

    Raises:
        KeyError: a piece is missing.
    """
    return _glue(tree, pieces)
