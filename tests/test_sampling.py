"""The sampling hash is a published contract: these vectors are the table in
docs/sampling.md, and mmh3 (an independent implementation) must agree on random keys."""

import mmh3
import pytest
from hypothesis import given
from hypothesis import strategies as st

import driftgate

# (key, seed, murmur3_x86_32, sampling bucket) -- the table of docs/sampling.md
VECTORS = [
    (b"", 0, 0x00000000, 0),
    (b"", 1, 0x514E28B7, 3175),
    (b"", 0xFFFFFFFF, 0x81F16F39, 5075),
    (b"\x00\x00\x00\x00", 0, 0x2362F9DE, 1382),
    (b"a", 0x9747B28C, 0x7FA09EA6, 4985),
    (b"abc", 0, 0xB3DD93FA, 7025),
    (b"hello", 0, 0x248BFA47, 1427),
    (b"Hello, world!", 0x9747B28C, 0x24884CBA, 1427),
    (b"The quick brown fox jumps over the lazy dog", 0x9747B28C, 0x2FA826CD, 1861),
    (b"user-42", 0, 0xB972DAD0, 7244),
    (b"user-42", 7, 0x600DB489, 3752),
    ("ü".encode(), 0, 0x7840E6AA, 4697),
]


@pytest.mark.parametrize(("key", "seed", "hash_", "bucket"), VECTORS)
def test_published_vectors(key, seed, hash_, bucket):
    assert driftgate.murmur3_x86_32(key, seed) == hash_
    assert driftgate.sampling_bucket(key, seed) == bucket
    assert bucket == (hash_ * 10_000) >> 32


def test_docs_publish_the_same_table():
    from pathlib import Path

    doc = (Path(__file__).parent.parent / "docs" / "sampling.md").read_text()
    for key, seed, hash_, bucket in VECTORS:
        row = f"| `{key!r}` | {seed} | `0x{hash_:08x}` | {bucket} |"
        assert row in doc, row


def test_str_keys_hash_as_utf8():
    assert driftgate.murmur3_x86_32("ü", 0) == driftgate.murmur3_x86_32("ü".encode(), 0)


@given(key=st.binary(max_size=200), seed=st.integers(0, 2**32 - 1))
def test_agrees_with_mmh3(key, seed):
    assert driftgate.murmur3_x86_32(key, seed) == mmh3.hash(key, seed, signed=False)


def test_seed_out_of_range_is_rejected():
    with pytest.raises(TypeError):
        driftgate.murmur3_x86_32("k", -1)
