"""gateway.inflate: an upstream body decoded in pieces of at most 64 KiB, bounded in total.

Identity, gzip/x-gzip and deflate (zlib-wrapped and raw) decode exactly whether fed one
byte at a time or whole; no piece is larger than PIECE, even from a bomb; the bound
raises BodyTooLarge as soon as it is passed (not after inflating everything); corrupt
data and unknown encodings raise BodyError.
"""

from __future__ import annotations

import random
import zlib
from collections.abc import Iterable, Iterator

import pytest

from gateway.inflate import PIECE, BodyError, BodyTooLarge, Inflater

MiB = 1 << 20
UNBOUNDED = 1 << 40
# Text-like data that compresses well, plus an incompressible stretch (stored blocks).
DATA = (
    b"".join(b"data: {\"n\": %d, \"text\": \"hello world\"}\n\n" % i for i in range(4000))
    + random.Random(7).randbytes(20_000)
)
WBITS = {"gzip": 31, "x-gzip": 31, "zlib-deflate": 15, "raw-deflate": -15}


def _compress(data: bytes, wbits: int, level: int = 9) -> bytes:
    c = zlib.compressobj(level, zlib.DEFLATED, wbits)
    return c.compress(data) + c.flush()


def _encoding(kind: str) -> str:
    return kind if kind in ("gzip", "x-gzip") else "deflate"


def _decode_all(inflater: Inflater, reads: Iterable[bytes]) -> list[bytes]:
    """Every piece ``inflater`` yields for ``reads``, then what ``close`` returns."""
    pieces = [piece for data in reads for piece in inflater.feed(data)]
    pieces.append(inflater.close())
    return pieces


def _bytewise(data: bytes) -> Iterator[bytes]:
    return (data[i : i + 1] for i in range(len(data)))


def _zero_bomb(total: int, block: int = MiB) -> Iterator[bytes]:
    """A gzip body inflating to ``total`` zero bytes, compressed lazily, block by block."""
    c = zlib.compressobj(9, zlib.DEFLATED, 31)
    zeros = bytes(block)
    for _ in range(total // block):
        if out := c.compress(zeros):
            yield out
    yield c.flush()


# --------------------------------------------------------------------------- identity


@pytest.mark.parametrize("encoding", ["identity", "", "IDENTITY", " identity "])
def test_identity_passes_through_in_bounded_pieces(encoding: str) -> None:
    data = random.Random(1).randbytes(3 * PIECE + 123)
    inflater = Inflater(encoding, 10)  # the bound is for inflation: an uncompressed body is not held to it
    pieces = _decode_all(inflater, [data, b"", b"tail"])
    assert b"".join(pieces) == data + b"tail"
    assert max(len(p) for p in pieces) == PIECE


# --------------------------------------------------------------------------- compressed


@pytest.mark.parametrize("kind", sorted(WBITS))
def test_compressed_decodes_exactly_in_one_go(kind: str) -> None:
    inflater = Inflater(_encoding(kind), UNBOUNDED)
    pieces = _decode_all(inflater, [_compress(DATA, WBITS[kind])])
    assert b"".join(pieces) == DATA and inflater.total == len(DATA)
    assert all(len(p) <= PIECE for p in pieces)


@pytest.mark.parametrize("kind", ["gzip", "x-gzip", "zlib-deflate"])
def test_compressed_decodes_exactly_fed_one_byte_at_a_time(kind: str) -> None:
    inflater = Inflater(_encoding(kind), UNBOUNDED)
    assert b"".join(_decode_all(inflater, _bytewise(_compress(DATA, WBITS[kind])))) == DATA


def test_raw_deflate_decodes_exactly_fed_one_byte_at_a_time() -> None:
    inflater = Inflater("deflate", UNBOUNDED)
    assert b"".join(_decode_all(inflater, _bytewise(_compress(DATA, -15)))) == DATA


@pytest.mark.parametrize("kind", sorted(WBITS))
def test_compressed_decodes_exactly_split_at_odd_sizes(kind: str) -> None:
    body = _compress(DATA, WBITS[kind])
    reads = [body[i : i + 7] for i in range(0, 21, 7)] + [body[21:1000], body[1000:]]
    assert b"".join(_decode_all(Inflater(_encoding(kind), UNBOUNDED), reads)) == DATA


@pytest.mark.parametrize("encoding", ["GZIP", "Deflate", " x-gzip "])
def test_encoding_names_are_case_and_space_insensitive(encoding: str) -> None:
    wbits = 15 if "deflate" in encoding.lower() else 31
    assert b"".join(_decode_all(Inflater(encoding, UNBOUNDED), [_compress(DATA, wbits)])) == DATA


@pytest.mark.parametrize("kind", sorted(WBITS))
def test_no_piece_is_larger_than_64_kib_for_a_highly_compressible_body(kind: str) -> None:
    size = 16 * MiB
    body = _compress(bytes(size), WBITS[kind])
    assert len(body) < 64 * 1024, "a 16 MiB body in a few KiB"
    inflater = Inflater(_encoding(kind), UNBOUNDED)
    pieces = _decode_all(inflater, [body])
    assert inflater.total == size and sum(map(len, pieces)) == size
    assert max(len(p) for p in pieces) <= PIECE
    assert len(pieces) >= size // PIECE


# --------------------------------------------------------------------------- the bound


@pytest.mark.parametrize("encoding", ["gzip", "deflate"])
def test_exactly_max_bytes_is_allowed_one_more_is_too_large(encoding: str) -> None:
    limit = 100_000
    data = random.Random(3).randbytes(limit + 1)

    def body(n: int) -> bytes:
        return _compress(data[:n], 31 if encoding == "gzip" else 15)

    assert b"".join(_decode_all(Inflater(encoding, limit), [body(limit)])) == data[:limit]
    inflater = Inflater(encoding, limit)
    with pytest.raises(BodyTooLarge, match="larger than 100000"):
        _decode_all(inflater, [body(limit + 1)])
    assert inflater.total == limit + 1


def test_lazy_gigabyte_bomb_is_stopped_at_the_bound() -> None:
    limit = MiB
    bomb = _zero_bomb(1 << 30)
    inflater = Inflater("gzip", limit)
    sent = 0
    with pytest.raises(BodyTooLarge):
        for data in bomb:
            sent += len(data)
            for _ in inflater.feed(data):
                pass
    assert limit < inflater.total <= limit + PIECE
    assert sent < 64 * 1024, f"stopped early in the body ({sent} compressed bytes read)"
    assert next(bomb, None) is not None, "the rest of the bomb was never needed"


def test_gigabyte_bomb_in_one_read_is_stopped_before_inflating_it() -> None:
    # Full flushes reset the compressor, so every further 1 MiB of zeros compresses to
    # the same bytes: a 1 GiB gzip body (trailer left off) built from two compressions.
    c = zlib.compressobj(9, zlib.DEFLATED, 31)
    zeros = bytes(MiB)
    head = c.compress(zeros) + c.flush(zlib.Z_FULL_FLUSH)
    block = c.compress(zeros) + c.flush(zlib.Z_FULL_FLUSH)
    assert block == c.compress(zeros) + c.flush(zlib.Z_FULL_FLUSH)
    bomb = head + block * 1023
    assert len(bomb) < 2 * MiB
    limit = 4 * MiB
    inflater = Inflater("gzip", limit)
    largest = 0
    with pytest.raises(BodyTooLarge):
        for piece in inflater.feed(bomb):
            largest = max(largest, len(piece))
    assert limit < inflater.total <= limit + PIECE
    assert largest <= PIECE


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("encoding", "body"),
    [
        ("gzip", b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\x03" + b"\xff" * 64),  # header, then no valid block
        ("gzip", b"this is not gzip at all, just text"),
        ("x-gzip", b"\x00" * 32),
        ("deflate", b"\xff" * 64),  # neither zlib-wrapped nor raw deflate
        ("deflate", b"\x78\x9c" + b"\xff" * 64),  # zlib header, then garbage
    ],
    ids=["gzip-bad-block", "gzip-text", "x-gzip-zeros", "deflate-ff", "zlib-header-garbage"],
)
def test_corrupt_data_is_body_error(encoding: str, body: bytes) -> None:
    inflater = Inflater(encoding, UNBOUNDED)
    with pytest.raises(BodyError) as info:
        _decode_all(inflater, [body])
    assert not isinstance(info.value, BodyTooLarge)


@pytest.mark.parametrize("kind", ["gzip", "zlib-deflate"])
def test_bad_checksum_after_good_data_is_body_error(kind: str) -> None:
    body = bytearray(_compress(DATA, WBITS[kind]))
    body[-8 if kind == "gzip" else -4] ^= 0xFF  # gzip: CRC32 then size; zlib: Adler-32
    inflater = Inflater(_encoding(kind), UNBOUNDED)
    with pytest.raises(BodyError) as info:
        _decode_all(inflater, [bytes(body)])
    assert not isinstance(info.value, BodyTooLarge)
    assert inflater.total > 0, "the data before the checksum was decoded"


@pytest.mark.parametrize("encoding", ["br", "zstd", "compress", "gzip, gzip", "gzip,br", "x" * 500])
def test_unknown_encoding_is_body_error(encoding: str) -> None:
    with pytest.raises(BodyError, match="unsupported content encoding") as info:
        Inflater(encoding, UNBOUNDED)
    assert len(str(info.value)) < 100, "the header is quoted, capped"


@pytest.mark.parametrize("wbits", [31, 15, -15])
def test_a_compressed_body_cut_short_is_an_error_at_its_end(wbits: int) -> None:
    data = _compress(b"data: x\n\n" * 1000, wbits)
    inflater = Inflater({31: "gzip", 15: "deflate", -15: "deflate"}[wbits], MiB)
    decoded = b"".join(inflater.feed(data[:-8]))
    assert b"data: x" in decoded
    with pytest.raises(BodyError):
        inflater.close()


def test_gzip_members_after_the_first_are_decoded_too() -> None:
    data = _compress(b"data: one\n\n", 31) + _compress(b"data: two\n\n", 31)
    inflater = Inflater("gzip", MiB)
    assert b"".join(_decode_all(inflater, _bytewise(data))) == b"data: one\n\ndata: two\n\n"


def test_bytes_after_a_deflate_stream_are_an_error() -> None:
    with pytest.raises(BodyError, match="after the end"):
        _decode_all(Inflater("deflate", MiB), [_compress(b"data: one\n\n", 15) + b"junk"])
