"""Binary encoding of state trees: dicts, lists, scalars, strings and numpy arrays.

Layout: ``b"CREST1"``, a little-endian uint32 header length, a JSON header, then the raw
little-endian bytes of every array in header order. Arrays appear in the header as
``{"__array__": [offset, dtype, shape]}``. No pickle: a state blob read back from a store can
only ever produce data, never code.

:func:`split` cuts a tree's large arrays into *pieces* of fixed row ranges, each packed alone
and named by its content, and :func:`join` puts them back: so a store can keep a large state
in bounded values, and rewrite only the pieces that changed since it last stored them (an
array that does not change, such as the labels, keeps its names).
"""

from __future__ import annotations

import hashlib
import json
import struct
from collections.abc import Mapping
from typing import Any

import numpy as np

_MAGIC = b"CREST1"
_ARRAY = "__array__"
_PIECES = "__pieces__"


def pack(tree: Any) -> bytes:
    """Encode a tree of dict/list/tuple/str/int/float/bool/None/ndarray."""
    buffers: list[bytes] = []
    offset = 0

    def encode(node: Any) -> Any:
        nonlocal offset
        if isinstance(node, np.ndarray):
            array = node if node.flags.c_contiguous else node.copy(order="C")
            dtype = array.dtype.newbyteorder("<") if array.dtype.byteorder == ">" else array.dtype
            raw = array.astype(dtype, copy=False).tobytes()
            entry = {_ARRAY: [offset, dtype.str, list(array.shape)]}
            buffers.append(raw)
            offset += len(raw)
            return entry
        if isinstance(node, dict):
            return {str(key): encode(value) for key, value in node.items()}
        if isinstance(node, list | tuple):
            return [encode(value) for value in node]
        if isinstance(node, np.generic):
            return node.item()
        if node is None or isinstance(node, str | int | float | bool):
            return node
        raise TypeError(f"cannot encode {type(node).__name__}")

    header = json.dumps(encode(tree), separators=(",", ":"), allow_nan=True).encode()
    return b"".join([_MAGIC, struct.pack("<I", len(header)), header, *buffers])


def unpack(blob: bytes) -> Any:
    """Decode :func:`pack`'s output; arrays are writable copies."""
    if not blob.startswith(_MAGIC):
        raise ValueError("not a crest state blob")
    (length,) = struct.unpack_from("<I", blob, len(_MAGIC))
    start = len(_MAGIC) + 4
    header = json.loads(blob[start : start + length])
    data = memoryview(blob)[start + length :]

    def decode(node: Any) -> Any:
        if isinstance(node, dict):
            if _ARRAY in node and len(node) == 1:
                offset, dtype, shape = node[_ARRAY]
                dt = np.dtype(dtype)
                count = int(np.prod(shape)) if shape else 1
                return np.frombuffer(data, dt, count, offset).reshape(shape).copy()
            return {key: decode(value) for key, value in node.items()}
        if isinstance(node, list):
            return [decode(value) for value in node]
        return node

    return decode(header)


def split(tree: Any, piece_bytes: int) -> tuple[Any, dict[str, bytes]]:
    """``tree`` with every array over ``piece_bytes`` replaced by the names of its pieces
    (consecutive rows, about ``piece_bytes`` each, packed), and the pieces by name.

    A piece's name is a hash of its content, so equal rows always give the same name.
    """
    pieces: dict[str, bytes] = {}

    def cut(node: Any) -> Any:
        if isinstance(node, np.ndarray) and node.ndim and node.nbytes > piece_bytes:
            rows = max(1, piece_bytes // max(1, node.nbytes // len(node)))
            names = []
            for start in range(0, len(node), rows):
                blob = pack(node[start : start + rows])
                name = hashlib.blake2b(blob, digest_size=16).hexdigest()
                pieces[name] = blob
                names.append(name)
            return {_PIECES: names}
        if isinstance(node, dict):
            return {key: cut(value) for key, value in node.items()}
        if isinstance(node, list | tuple):
            return [cut(value) for value in node]
        return node

    return cut(tree), pieces


def join(tree: Any, pieces: Mapping[str, bytes]) -> Any:
    """Undo :func:`split`: ``tree`` with its arrays put together from ``pieces``.

    Raises:
        KeyError: a piece is missing.
    """

    def glue(node: Any) -> Any:
        if isinstance(node, dict):
            if _PIECES in node and len(node) == 1:
                return np.concatenate([unpack(pieces[name]) for name in node[_PIECES]])
            return {key: glue(value) for key, value in node.items()}
        if isinstance(node, list):
            return [glue(value) for value in node]
        return node

    return glue(tree)
