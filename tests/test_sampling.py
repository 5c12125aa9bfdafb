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


# (key, rollout, seed, cohort seed, bucket) -- the rollout cohorts' table of docs/sampling.md
SALTED_VECTORS = [
    (b"user-42", "orders", 0, 0x75184C89, 25),
    (b"user-42", "checkout", 0, 0x440D57D7, 9860),
    (b"user-42", "orders", 7, 0x16D7BAD2, 7640),
    (b"hello", "payments.v2", 0x9747B28C, 0x0BB8A411, 4100),
    (b"", "orders", 0, 0x75184C89, 3306),
    ("ü".encode(), "orders", 1, 0x15A362B5, 8270),
    (b"user-42", "default", 0, 0x00000000, 7244),
    (b"user-42", "default", 7, 0x00000007, 3752),
]


def _mmh3_cohort_seed(rollout: str, seed: int) -> int:
    """The documented derivation, written with mmh3 alone."""
    return seed if rollout == "default" else mmh3.hash(rollout.encode(), seed, signed=False)


@pytest.mark.parametrize(("key", "rollout", "seed", "cohort", "bucket"), SALTED_VECTORS)
def test_published_rollout_cohort_vectors(key, rollout, seed, cohort, bucket):
    assert driftgate.cohort_seed(rollout, seed) == cohort
    assert _mmh3_cohort_seed(rollout, seed) == cohort
    assert driftgate.sampling_bucket(key, cohort) == bucket
    assert (mmh3.hash(key, cohort, signed=False) * 10_000) >> 32 == bucket


def test_docs_publish_the_same_rollout_cohort_table():
    from pathlib import Path

    doc = (Path(__file__).parent.parent / "docs" / "sampling.md").read_text()
    for key, rollout, seed, cohort, bucket in SALTED_VECTORS:
        row = f"| `{key!r}` | `{rollout}` | {seed} | `0x{cohort:08x}` | {bucket} |"
        assert row in doc, row


@given(
    rollout=st.from_regex(r"[A-Za-z0-9_.:-]{1,64}", fullmatch=True),
    seed=st.integers(0, 2**32 - 1),
    key=st.binary(max_size=64),
)
def test_rollout_cohorts_agree_with_mmh3(rollout, seed, key):
    cohort = driftgate.cohort_seed(rollout, seed)
    assert cohort == _mmh3_cohort_seed(rollout, seed)
    assert (
        driftgate.sampling_bucket(key, cohort)
        == (mmh3.hash(key, cohort, signed=False) * 10_000) >> 32
    )


def test_a_bad_rollout_name_has_no_cohort():
    with pytest.raises(ValueError, match="invalid rollout name 'a b'"):
        driftgate.cohort_seed("a b", 0)
