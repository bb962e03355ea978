"""Property tests of the codecs, and arbitrary bytes against a live server."""

from __future__ import annotations

import json

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nextstar_rt.wire.codec import Encoding, decode, encode, parse_request, ws_frame
from nextstar_rt.wire.errors import ErrorCode, NextstarError


# Values both encodings carry unchanged: JSON has no bytes, no NaN, and
# integers beyond 64 bits do not fit MessagePack.
scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text()
)
values = st.recursive(
    scalars,
    lambda children: (
        st.lists(children, max_size=5)
        | st.dictionaries(st.text(max_size=10), children, max_size=5)
    ),
    max_leaves=25,
)


@given(values)
def test_messagepack_round_trip(value):
    assert decode(encode(value, Encoding.MSGPACK)) == value


@given(values)
def test_json_round_trip(value):
    assert decode(encode(value, Encoding.JSON).decode()) == value


@given(st.binary(max_size=200))
def test_arbitrary_bytes_decode_or_fail_with_bad_frame(data):
    try:
        frame = decode(data)
    except NextstarError as error:
        assert error.code is ErrorCode.BAD_FRAME
        return
    assert frame == msgpack.unpackb(data, strict_map_key=True)


@given(values)
def test_any_decoded_value_parses_or_fails_with_bad_request(value):
    try:
        request = parse_request(value)
    except NextstarError as error:
        assert error.code is ErrorCode.BAD_REQUEST
        return
    assert request.method == value["method"]


@pytest.mark.parametrize("size", [0, 125, 126, 65535, 65536, 70000])
def test_prepared_frames_have_the_right_length_header(size):
    frame = ws_frame(b"x" * size, binary=True)
    assert frame[0] == 0x82
    if size < 126:
        assert frame[1] == size and len(frame) == 2 + size
    elif size < 65536:
        assert frame[1] == 126 and int.from_bytes(frame[2:4], "big") == size
    else:
        assert frame[1] == 127 and int.from_bytes(frame[2:10], "big") == size


def test_json_text_frames_use_utf8_without_escapes():
    assert encode({"t": "é✓"}, Encoding.JSON) == '{"t":"é✓"}'.encode()
    assert json.loads(encode({"a": [1, 2]}, Encoding.JSON)) == {"a": [1, 2]}


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(garbage=st.lists(st.binary(max_size=64) | st.text(max_size=64), max_size=8))
async def test_arbitrary_frames_never_break_a_session_or_the_server(
    sqlite_server, garbage
):
    client = await sqlite_server.connect()
    try:
        for data in garbage:
            await client.send_raw(data)
        # Whatever came before, a well-formed request still gets its answer.
        assert "time" in await client.call("ping")
        other = await sqlite_server.connect()
        assert "time" in await other.call("ping")
        await other.close()
    finally:
        await client.close()
