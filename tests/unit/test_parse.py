"""The parser yields the same entries however the bytes are cut, and never raises on input."""
from __future__ import annotations

import json

from hypothesis import given, settings, strategies as st

from shipper.parse import FORMAT_CRI, FORMAT_DOCKER, Entries, EntryFlag, StreamParser, detect_format

TS = b"2026-11-28T18:00:00.123456789Z"

cri_message = st.binary(max_size=120).map(lambda b: b.replace(b"\n", b" "))
cri_line = st.one_of(
    st.tuples(st.sampled_from([b"stdout", b"stderr"]), st.sampled_from([b"F", b"P"]), cri_message).map(
        lambda t: TS + b" " + t[0] + b" " + t[1] + b" " + t[2] + b"\n"),
    cri_message.map(lambda m: m + b"\n"),                                  # malformed header
    st.just(TS + b" stdout F\n"),                                           # empty message
)
docker_line = st.one_of(
    st.tuples(st.text(max_size=80), st.booleans(), st.sampled_from(["stdout", "stderr"])).map(
        lambda t: json.dumps({"log": t[0].replace("\n", " ") + ("\n" if t[1] else ""), "stream": t[2],
                              "time": "2026-11-28T18:00:00.1Z"}).encode() + b"\n"),
    st.binary(max_size=40).map(lambda b: b"{" + b.replace(b"\n", b"") + b"\n"),   # truncated JSON
)


def parse_whole(data: bytes, **options) -> list:
    parser = StreamParser(**options)
    out = parser.feed(data, 0, end_of_file=True)
    return normalised(out)


def parse_chunked(data: bytes, cuts: list[int], **options) -> list:
    parser = StreamParser(**options)
    out = Entries()
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    for start, end in zip(points, points[1:]):
        parser.feed(data[start:end], start, end_of_file=False, out=out)
    parser.feed(b"", len(data), end_of_file=True, out=out)
    return normalised(out)


def normalised(out: Entries) -> list:
    return sorted(out.rows())


@settings(max_examples=300, deadline=None)
@given(st.lists(cri_line, max_size=40), st.lists(st.integers(min_value=0, max_value=10_000), max_size=12),
       st.sampled_from([64, 1 << 20]))
def test_cri_entries_do_not_depend_on_how_bytes_are_cut(lines, cuts, max_entry):
    data = b"".join(lines)
    assert parse_chunked(data, cuts, fmt=FORMAT_CRI, max_entry_bytes=max_entry) == \
        parse_whole(data, fmt=FORMAT_CRI, max_entry_bytes=max_entry)


@settings(max_examples=200, deadline=None)
@given(st.lists(docker_line, max_size=30), st.lists(st.integers(min_value=0, max_value=10_000), max_size=12))
def test_docker_entries_do_not_depend_on_how_bytes_are_cut(lines, cuts):
    data = b"".join(lines)
    assert parse_chunked(data, cuts, fmt=FORMAT_DOCKER) == parse_whole(data, fmt=FORMAT_DOCKER)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=2000), st.lists(st.integers(min_value=0, max_value=3000), max_size=8))
def test_arbitrary_bytes_never_raise_and_nothing_is_lost(data, cuts):
    entries = parse_chunked(data, cuts, fmt=FORMAT_CRI, max_entry_bytes=256)
    # Every non-empty physical line shows up in some entry body (headers stripped or not).
    shipped = b"".join(body for _o, _t, _s, body, _f in entries)
    for line in data.split(b"\n"):
        message = line.split(b" ", 3)[-1] if line.startswith(TS) else line
        for piece in message.split(b"\n"):
            assert piece[:256] in shipped


def test_partial_lines_are_joined_per_stream_even_when_interleaved():
    data = (TS + b" stdout P hel\n" + TS + b" stderr F boom\n" + TS + b" stdout P lo \n" + TS + b" stdout F world\n")
    out = StreamParser().feed(data, 0)
    assert [(s, b) for _o, _t, s, b, _f in out.rows()] == [(b"stderr", b"boom"), (b"stdout", b"hello world")]
    assert out.flags[1] & EntryFlag.JOINED
    assert out.offsets[1] == 0


def test_entry_longer_than_the_limit_is_cut_marked_and_continued():
    body = b"x" * 2500
    out = StreamParser(max_entry_bytes=1024).feed(TS + b" stdout F " + body + b"\n", 0)
    assert [len(b) for b in out.bodies] == [1024, 1024, 452]
    assert out.flags[0] & EntryFlag.TRUNCATED and not out.flags[0] & EntryFlag.CONTINUED
    assert out.flags[2] & EntryFlag.CONTINUED and not out.flags[2] & EntryFlag.TRUNCATED
    assert b"".join(out.bodies) == body


def test_fifty_megabyte_line_is_shipped_in_pieces_with_bounded_buffering():
    parser = StreamParser(max_entry_bytes=1 << 20)
    line = TS + b" stdout F " + b"y" * (50 << 20) + b"\n"
    out = Entries()
    step = 1 << 20
    for start in range(0, len(line), step):
        parser.feed(line[start:start + step], start, out=out)
        assert len(parser._carry) <= (1 << 20) + 4096 + step
    assert sum(len(b) for b in out.bodies) == 50 << 20
    assert all(len(b) <= 1 << 20 for b in out.bodies)
    assert parser.safe_offset == len(line)


def test_malformed_header_and_broken_json_are_shipped_raw_and_flagged():
    out = StreamParser(fmt=FORMAT_CRI).feed(b"not a cri line\n", 0)
    assert out.bodies == [b"not a cri line"] and out.flags[0] & EntryFlag.BAD_HEADER
    out = StreamParser(fmt=FORMAT_DOCKER).feed(b'{"log": "trunc\n', 0)
    assert out.bodies == [b'{"log": "trunc'] and out.flags[0] & EntryFlag.BAD_JSON


def test_line_without_newline_is_held_until_end_of_file():
    parser = StreamParser()
    out = parser.feed(TS + b" stdout F complete\n" + TS + b" stdout F held", 0)
    assert out.bodies == [b"complete"]
    assert parser.safe_offset == len(TS + b" stdout F complete\n")
    out = parser.feed(b"", parser._next_offset, end_of_file=True)
    assert out.bodies == [b"held"] and out.flags[0] & EntryFlag.UNTERMINATED


def test_safe_offset_never_passes_an_open_partial_group():
    parser = StreamParser()
    first = TS + b" stdout F one\n"
    parser.feed(first + TS + b" stdout P two-", 0)
    parser.feed(b"\n", len(first) + len(TS + b" stdout P two-"))
    assert parser.safe_offset == len(first)


def test_multiline_groups_stack_traces_by_start_pattern():
    data = b"".join(TS + b" stderr F " + line + b"\n" for line in
                    [b"Exception: boom", b"  at a()", b"  at b()", b"next entry"])
    parser = StreamParser(multiline_start=r"\S")
    out = parser.feed(data, 0, end_of_file=True)
    assert out.bodies == [b"Exception: boom\n  at a()\n  at b()", b"next entry"]
    assert out.flags[0] & EntryFlag.MULTILINE


def test_format_is_detected_from_the_first_bytes():
    assert detect_format(b'{"log":"x\\n"}') == FORMAT_DOCKER
    assert detect_format(TS + b" stdout F x") == FORMAT_CRI


def test_nul_bytes_and_invalid_utf8_pass_through_as_bytes():
    out = StreamParser().feed(TS + b" stdout F a\x00b\xff\xfe\n", 0)
    assert out.bodies == [b"a\x00b\xff\xfe"]


def test_docker_stream_field_other_than_stdout_or_stderr_is_shipped_raw():
    line = b'{"log":"x\\n","stream":"stdout\\",\\"body\\":\\"forged","time":"2026-11-28T18:00:00Z"}\n'
    out = StreamParser(fmt=FORMAT_DOCKER).feed(line, 0)
    assert out.streams == [b"stdout"] and out.flags[0] & EntryFlag.BAD_JSON
    assert out.bodies == [line[:-1]]


timestamp = st.one_of(st.just(TS), st.sampled_from([
    b"2026-11-28T18:00:00Z", b"2026-11-28T18:00:00.1+01:00", b"2026-11-28T18:00:00.1234567890Z",
    b"2026-11-28T18:00:00.Z", b"2026-11-28 18:00:00Z", b"2026-11-28T18:00:00+0100", b"x", b""]),
    st.binary(max_size=24).map(lambda b: b.replace(b"\n", b"").replace(b" ", b"")))
mixed_cri_line = st.tuples(timestamp, st.sampled_from([b"stdout", b"stderr", b"stdin", b""]),
                           st.sampled_from([b"F", b"P", b"FF", b""]), cri_message,
                           st.sampled_from([b" ", b"", b"  "])).map(
    lambda t: t[0] + b" " + t[1] + b" " + t[2] + t[4] + t[3] + b"\n")


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(cri_line, mixed_cri_line), max_size=40),
       st.lists(st.integers(min_value=0, max_value=10_000), max_size=12), st.sampled_from([16, 64, 1 << 20]))
def test_native_cri_loop_gives_the_entries_of_the_python_parser(lines, cuts, max_entry):
    from shipper import parse
    if parse._native is None:
        return
    data = b"".join(lines)
    native = parse_chunked(data, cuts, fmt=FORMAT_CRI, max_entry_bytes=max_entry)
    saved, parse._native = parse._native, None
    try:
        reference = parse_chunked(data, cuts, fmt=FORMAT_CRI, max_entry_bytes=max_entry)
    finally:
        parse._native = saved
    assert native == reference


@settings(max_examples=200, deadline=None)
@given(st.lists(st.one_of(cri_line, mixed_cri_line), max_size=30),
       st.lists(st.integers(min_value=0, max_value=10_000), max_size=8), st.booleans())
def test_the_parser_counts_every_physical_line_once(lines, cuts, native):
    """`lines` (the lines_read metric) is the number of newlines fed, however the bytes are cut and
    whichever loop (native or Python) parsed them."""
    from shipper import parse
    data = b"".join(lines)
    saved = parse._native
    if not native:
        parse._native = None
    try:
        parser = StreamParser(fmt=FORMAT_CRI)
        points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
        for start, end in zip(points, points[1:]):
            parser.feed(data[start:end], start)
        parser.feed(b"", len(data), end_of_file=True)
    finally:
        parse._native = saved
    assert parser.lines == data.count(b"\n")
