"""The E5S1 pieces that need no model: Q4_0 dequantisation and the rebuilt SentencePiece charsmap."""

from __future__ import annotations

import struct

import numpy as np
from tokenizers import normalizers

from modelbuild.charsmap import build_precompiled_charsmap
from modelbuild.e5s1 import dequantize_q4_0


def test_q4_0_block_unpacks_low_nibbles_first_then_high() -> None:
    # weights j and j+16 share byte j: low nibble = weight j, high nibble = weight j+16; value = (q - 8) * d
    q = np.arange(32) % 16
    packed = bytes(int(q[j]) | (int(q[j + 16]) << 4) for j in range(16))
    block = struct.pack("<e", 0.5) + packed
    weights = dequantize_q4_0(block + block, 64)
    expected = (q - 8) * 0.5
    np.testing.assert_array_equal(weights[:32], expected)
    np.testing.assert_array_equal(weights[32:], expected)


def test_charsmap_maps_each_codepoint_and_leaves_others() -> None:
    norm_map = {
        0x200C: [0x20],  # ZWNJ -> space, as XLM-R's normaliser does
        0xFF21: [0x41],  # fullwidth A
        0xFEFB: [0x644, 0x627],  # lam-alef ligature -> two letters
        0x00AD: [],  # soft hyphen removed
        0xFB01: [0x66, 0x69],  # fi ligature
    }
    n = normalizers.Precompiled(build_precompiled_charsmap(norm_map))
    assert n.normalize_str("می\u200cخواهم") == "می خواهم"
    assert n.normalize_str("\uff21BC \ufefb co\u00adop \ufb01le") == "ABC لا coop file"
    untouched = "كتاب يک ۱۲۳ 😀 café"
    assert n.normalize_str(untouched) == untouched
