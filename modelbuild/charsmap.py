"""Build a SentencePiece `precompiled_charsmap` (double-array trie + replacement strings) from a map."""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

_VALUE_FLAG = 1 << 31
_HAS_LEAF = 1 << 8
_MAX_OFFSET = 1 << 21  # offsets below this fit the unit's offset field without the extension bit


@dataclass
class _Node:
    children: dict[int, _Node] = field(default_factory=dict)
    value: int | None = None


def _build_trie(keys: dict[bytes, int]) -> _Node:
    root = _Node()
    for key, value in keys.items():
        if not key or 0 in key:
            raise ValueError("charsmap keys must be non-empty and free of NUL bytes")
        node = root
        for byte in key:
            node = node.children.setdefault(byte, _Node())
        node.value = value
    return root


def _double_array(root: _Node) -> list[int]:
    """Lay the trie out as darts-clone units: label (8 bits), has-leaf bit, XOR offset to the children."""
    units: list[int] = [0]
    used_slots = {0}
    used_bases: set[int] = set()
    first_free = 1
    queue: list[tuple[_Node, int]] = [(root, 0)]
    while queue:
        node, pos = queue.pop()
        labels = sorted(node.children)
        if node.value is not None:
            labels = [0, *labels]  # the value unit sits at the children's base, label 0
        if not labels:
            continue
        while first_free in used_slots:
            first_free += 1
        slot = first_free
        while True:
            base = slot ^ labels[0]
            if (
                base not in used_bases
                and all((base ^ lab) not in used_slots and (base ^ lab) != 0 for lab in labels)
                and (pos ^ base) < _MAX_OFFSET
            ):
                break
            slot += 1
            while slot in used_slots:
                slot += 1
        used_bases.add(base)
        top = max(base ^ lab for lab in labels)
        if top >= len(units):
            units.extend([0] * (top + 1 - len(units)))
        units[pos] |= (pos ^ base) << 10
        if node.value is not None:
            units[pos] |= _HAS_LEAF
            units[base] = _VALUE_FLAG | node.value
            used_slots.add(base)
        for lab in sorted(node.children):
            child_pos = base ^ lab
            units[child_pos] = lab
            used_slots.add(child_pos)
            queue.append((node.children[lab], child_pos))
    # a lookup probes base ^ byte for any byte: pad to whole 256-unit blocks so probes stay inside
    units.extend([0] * (-len(units) % 256))
    return units


def build_precompiled_charsmap(norm_map: dict[int, list[int]]) -> bytes:
    """Per-codepoint replacements -> bytes that `tokenizers.normalizers.Precompiled` accepts."""
    pool = bytearray()
    offsets: dict[str, int] = {}
    keys: dict[bytes, int] = {}
    for cp in sorted(norm_map):
        if cp == 0:
            continue  # NUL ends a trie key: it cannot be mapped
        out = "".join(chr(c) for c in norm_map[cp])
        if out not in offsets:
            offsets[out] = len(pool)
            pool += out.encode("utf-8") + b"\x00"
        keys[chr(cp).encode("utf-8")] = offsets[out]
    units = _double_array(_build_trie(keys))
    trie = struct.pack(f"<{len(units)}I", *units)
    return struct.pack("<I", len(trie)) + trie + bytes(pool)
