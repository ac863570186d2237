"""FrameDecoder, byte by byte: tables of (bytes in, frames out), every split point, oversize skips."""

import struct

import pytest

from agentserver.framing import Frame, FrameDecoder, Oversize, encode_frame


def header(length: int) -> bytes:
    return struct.pack(">I", length)


# (name, max_frame, chunks fed one after another, events out, mid_frame after, buffered after)
CASES = [
    ("one frame", 100, [header(3) + b"abc"], [Frame(b"abc")], False, 0),
    ("an empty frame", 100, [header(0)], [Frame(b"")], False, 0),
    ("two frames in one read", 100, [header(1) + b"a" + header(2) + b"bc"], [Frame(b"a"), Frame(b"bc")], False, 0),
    ("a frame and half a header", 100, [header(1) + b"a" + b"\x00\x00"], [Frame(b"a")], True, 2),
    ("a header alone", 100, [header(5)], [], True, 4),
    ("a header and part of the body", 100, [header(5) + b"ab"], [], True, 6),
    ("the body in three reads", 100, [header(5) + b"a", b"bc", b"de"], [Frame(b"abcde")], False, 0),
    ("exactly max_frame", 4, [header(4) + b"abcd"], [Frame(b"abcd")], False, 0),
    ("one byte over: refused from the header", 4, [header(5)], [Oversize(5)], True, 0),
    ("an oversize body is skipped, the next frame read", 4,
     [header(6) + b"abc", b"def" + header(2) + b"ok"], [Oversize(6), Frame(b"ok")], False, 0),
    ("an oversize body and the next frame in one read", 4,
     [header(6) + b"abcdef" + header(1) + b"z"], [Oversize(6), Frame(b"z")], False, 0),
    ("a 4 GiB announcement", 1 << 20, [b"\xff\xff\xff\xff" + b"<env:message"], [Oversize(0xFFFFFFFF)], True, 0),
    ("frames around an oversize one", 4,
     [header(1) + b"a" + header(9) + b"123456789" + header(1) + b"b"], [Frame(b"a"), Oversize(9), Frame(b"b")],
     False, 0),
]


@pytest.mark.parametrize("name,max_frame,chunks,events,mid_frame,buffered", CASES, ids=[case[0] for case in CASES])
def test_decoder_table(name, max_frame, chunks, events, mid_frame, buffered):
    decoder = FrameDecoder(max_frame)
    got = []
    for chunk in chunks:
        got.extend(decoder.feed(chunk))
    assert got == events
    assert decoder.mid_frame is mid_frame
    assert decoder.buffered == buffered


STREAM = [b"first", b"", b"x" * 300, b"<env:message/>", b"last"]


def test_every_split_point_gives_the_same_frames():
    data = b"".join(encode_frame(frame) for frame in STREAM)
    for cut in range(len(data) + 1):
        decoder = FrameDecoder(1000)
        got = decoder.feed(data[:cut]) + decoder.feed(data[cut:])
        assert got == [Frame(frame) for frame in STREAM], cut
        assert not decoder.mid_frame and decoder.buffered == 0


def test_one_byte_at_a_time_gives_the_same_frames_and_skips():
    frames = [b"ok", b"y" * 50, b"after"]  # the middle one is oversize for max_frame 10
    data = b"".join(encode_frame(frame) for frame in frames)
    decoder = FrameDecoder(10)
    got = []
    for i in range(len(data)):
        got.extend(decoder.feed(data[i : i + 1]))
        assert decoder.buffered <= 4 + 10  # an oversize body is never held
    assert got == [Frame(b"ok"), Oversize(50), Frame(b"after")]


def test_an_oversize_header_is_reported_before_any_body_byte():
    decoder = FrameDecoder(100)
    assert decoder.feed(header(101)) == [Oversize(101)]
    assert decoder.mid_frame  # still skipping the 101 body bytes
    assert decoder.feed(b"z" * 100) == [] and decoder.mid_frame
    assert decoder.feed(b"z") == [] and not decoder.mid_frame


def test_frames_are_pulled_one_at_a_time_and_judged_by_the_limit_in_force():
    decoder = FrameDecoder(4)
    decoder.receive(encode_frame(b"hi") + encode_frame(b"a longer frame"))
    assert decoder.frame_ready
    assert decoder.next_event() == Frame(b"hi")
    assert decoder.frame_ready  # the next header is already over the limit
    decoder.max_frame = 100  # raised before it is taken (a client authenticated)
    assert decoder.next_event() == Frame(b"a longer frame")
    assert decoder.next_event() is None and not decoder.frame_ready and not decoder.mid_frame


def test_frame_ready_and_mid_frame_tell_a_partial_frame_from_a_complete_one():
    decoder = FrameDecoder(100)
    decoder.receive(encode_frame(b"one") + header(10) + b"par")
    assert decoder.frame_ready and decoder.mid_frame
    decoder.next_event()
    assert not decoder.frame_ready and decoder.mid_frame and decoder.buffered == 7


def test_framing_imports_only_struct():
    import subprocess
    import sys

    code = "import sys, agentserver.framing; print(sorted(m for m in ('lxml', 'aiostream', 'yaml', 'xmlable') if m in sys.modules))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"
