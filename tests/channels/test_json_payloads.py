"""Channel payload JSON: the fast codec (msgspec) never changes what goes on the wire
or what a peer's payload means; the stdlib decides wherever the two would differ."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ppcp.control.aio_channel import decode_json, encode_json
from ppcp.core.errors import ChannelError

STDLIB = json.JSONEncoder(separators=(",", ":"), sort_keys=True)

scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text()
)
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=12,
)


@given(st.dictionaries(st.text(), values, max_size=6))
def test_encoding_is_byte_for_byte_the_stdlib_compact_sorted_form(obj: dict[str, Any]) -> None:
    assert encode_json(obj) == STDLIB.encode(obj).encode("utf-8")


@pytest.mark.parametrize(
    "obj",
    [
        {"command": "caf\u00e9"},  # the stdlib escapes non-ASCII
        {"argv": ["ls", "\udcff"]},  # a byte that is not UTF-8 (surrogateescape)
        {"command": "x\udcff"},
        {"timeout": 1e-7},  # the stdlib writes 1e-07
        {"timeout": 1e16},
        {"exit_code": 2**70},
    ],
)
def test_the_cases_msgspec_writes_differently_still_come_out_as_the_stdlib_writes_them(
    obj: dict[str, Any],
) -> None:
    assert encode_json(obj) == STDLIB.encode(obj).encode("utf-8")


@given(st.dictionaries(st.text(), values, max_size=6))
def test_decoding_what_we_encode_gives_what_the_stdlib_gives(obj: dict[str, Any]) -> None:
    payload = STDLIB.encode(obj).encode("utf-8")
    assert repr(decode_json(payload, "payload")) == repr(json.loads(payload))


@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        (b'{"a":"\\udc80"}', {"a": "\udc80"}),  # msgspec refuses lone surrogates
        (b'{"a":1e400}', {"a": float("inf")}),
        (b'{"a":1,"a":2}', {"a": 2}),
        (b'{"a":123456789012345678901234567890}', {"a": 123456789012345678901234567890}),
    ],
)
def test_payloads_msgspec_refuses_mean_what_they_mean_to_the_stdlib(
    payload: bytes, expected: dict[str, Any]
) -> None:
    assert decode_json(payload, "payload") == expected


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        (b'{"a":"\xff"}', "not UTF-8 JSON"),
        (b'{"a":[1,]}', "not UTF-8 JSON"),
        (b"[1, 2]", "not a JSON object"),
        (b"", "not UTF-8 JSON"),
        (b"[" * 60000 + b"]" * 60000, "nested too deeply"),
        (b'{"a":' * 30000 + b"1" + b"}" * 30000, "nested too deeply"),
    ],
)
def test_malformed_payloads_are_channel_errors_with_the_reason(
    payload: bytes, message: str
) -> None:
    with pytest.raises(ChannelError, match=message):
        decode_json(payload, "payload")
