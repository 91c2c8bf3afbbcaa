import numpy as np
import pytest

from crest.service.codec import pack, unpack


def test_round_trip_keeps_types_values_and_dtypes() -> None:
    tree = {
        "a": np.arange(12, dtype=np.int64).reshape(3, 4)[:, ::2],  # not contiguous
        "b": [np.float32(1.5), None, True, "text", {"c": np.zeros((0, 3), np.float16)}],
        "d": np.array([1.0, np.nan, np.inf], dtype=">f8"),  # big-endian input
        "e": np.array(7, dtype=np.int32),
    }
    back = unpack(pack(tree))
    assert back["a"].tolist() == [[0, 2], [4, 6], [8, 10]]
    assert back["b"][:4] == [1.5, None, True, "text"]
    assert back["b"][4]["c"].shape == (0, 3)
    assert back["b"][4]["c"].dtype == np.float16
    assert np.array_equal(back["d"], tree["d"], equal_nan=True)
    assert back["e"].shape == () and back["e"] == 7
    back["a"][0, 0] = 99  # arrays come back writable


def test_rejects_foreign_blobs_and_objects() -> None:
    with pytest.raises(ValueError, match="not a crest"):
        unpack(b"\x80\x04pickle")
    with pytest.raises(TypeError):
        pack({"x": object()})


def test_split_cuts_large_arrays_into_named_pieces_that_join_back() -> None:
    from crest.service.codec import join, split

    history = np.arange(10_000, dtype=np.float32).reshape(2500, 4)
    tree = {"labels": np.arange(3000), "history": history, "small": np.ones(3), "n": [1, "x"]}
    head, pieces = split(tree, 4096)
    assert len(head["labels"]["__pieces__"]) == 6  # 24,000 bytes in rows of 4,096 at most
    assert all(len(piece) < 4096 + 200 for piece in pieces.values())
    assert isinstance(head["small"], np.ndarray), "a small array stays in the head"
    back = join(unpack(pack(head)), pieces)
    assert np.array_equal(back["labels"], tree["labels"])
    assert np.array_equal(back["history"], history) and back["history"].dtype == np.float32
    assert back["n"] == [1, "x"]

    history[-1] = -1  # one row changed: one piece renamed, the others named as before
    _, again = split(tree, 4096)
    assert len(set(again) - set(pieces)) == 1


def test_pieces_of_a_view_are_those_of_a_copy_named_by_their_packed_bytes() -> None:
    import hashlib

    from crest.service.codec import split

    base = np.arange(40_000, dtype=">i8").reshape(20_000, 2)
    view = base[::2]  # neither contiguous nor little-endian: cut from a converted copy
    head, pieces = split({"a": view}, 4096)
    copied_head, copied = split({"a": np.ascontiguousarray(view, dtype="<i8")}, 4096)
    assert head == copied_head and list(pieces) == list(copied)
    for name in pieces:
        blob = pieces[name]
        assert blob == copied[name] and len(blob) == pieces.size(name)
        assert name == hashlib.blake2b(blob, digest_size=16).hexdigest()
        assert unpack(blob).dtype == np.dtype("<i8")


def test_a_store_never_packs_the_pieces_it_holds(monkeypatch: pytest.MonkeyPatch) -> None:
    import asyncio

    from crest.service import codec
    from crest.service.store import MemoryStore

    packed: list[int] = []
    real_pack = codec.pack

    def counted(tree: object) -> bytes:
        packed.append(1)
        return real_pack(tree)

    monkeypatch.setattr(codec, "pack", counted)
    history = np.zeros((2000, 4), np.float32)
    tree = {"labels": np.arange(2000), "history": history}

    async def main() -> None:
        store = MemoryStore()
        head, pieces = codec.split(tree, 4096)
        await store.create("j", b"head", pieces)
        assert len(packed) == len(pieces), "each new piece packed once"
        history[0] = 1.0  # one piece changes
        packed.clear()
        head, pieces = codec.split(tree, 4096)
        await store.snapshot("j", b"head", pieces)
        assert len(packed) == 1, "only the changed piece is packed"
        stored = await store.load("j")
        back = codec.join(codec.unpack(codec.pack(head)), stored.pieces)
        assert np.array_equal(back["history"], history)

    asyncio.run(main())
