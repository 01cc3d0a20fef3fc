"""Hypothesis strategies over the fuzz targets' inputs: raw bytes and mutated seeds.

The mutations (overwrite, insert, delete, truncate, splice two seeds) are
the ones a coverage-guided fuzzer starts with; applied to genuine inputs
they reach the deep states of each machine that random bytes never do.
"""

from __future__ import annotations

from hypothesis import strategies as st

from tests.fuzz import targets

_OPS = ("set", "insert", "delete", "truncate", "splice")


def _mutate(seed: bytes, other: bytes, edits: list[tuple[str, int, int]]) -> bytes:
    data = bytearray(seed)
    for op, pos, value in edits:
        at = pos % (len(data) + 1)
        if op == "set" and data:
            data[at % len(data)] = value
        elif op == "insert":
            data[at:at] = bytes((value,))
        elif op == "delete" and data:
            del data[at % len(data)]
        elif op == "truncate":
            del data[at:]
        elif op == "splice":
            data[at:] = other[value % (len(other) + 1) :]
    return bytes(data)


def inputs(name: str, max_size: int = 4096) -> st.SearchStrategy[bytes]:
    """Inputs for target ``name``: genuine seeds, mutated seeds, and raw bytes."""
    seeds = targets.seeds(name)
    edit = st.tuples(st.sampled_from(_OPS), st.integers(0, 1 << 16), st.integers(0, 255))
    mutated = st.builds(
        _mutate, st.sampled_from(seeds), st.sampled_from(seeds), st.lists(edit, max_size=8)
    )
    header = st.binary(min_size=2, max_size=2)
    raw = st.builds(bytes.__add__, header, st.binary(max_size=max_size))
    return st.one_of(st.sampled_from(seeds), mutated, raw)
