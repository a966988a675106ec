"""Modbus register maps: where each meter quantity sits, how it is encoded, how to read it in few
requests, and decoding (pure: no I/O)."""

import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

DataType = Literal["float32", "int16", "uint16", "int32", "uint32"]
WordOrder = Literal["high_first", "low_first"]
FunctionCode = Literal[3, 4]

MAX_REGISTERS_PER_READ = 125
"""The Modbus limit for one read request."""
MAX_GAP_REGISTERS = 40
"""Unused registers a read may span to save a request: reading them costs less than a round trip,
and values from one reply belong to one measuring cycle."""

_WIDTH: dict[DataType, int] = {"float32": 2, "int16": 1, "uint16": 1, "int32": 2, "uint32": 2}
_STRUCT: dict[DataType, str] = {"float32": ">f", "int16": ">h", "uint16": ">H", "int32": ">i", "uint32": ">I"}


@dataclass(frozen=True, slots=True)
class RegisterSpec:
    """One value: register address (0-based, as on the wire), encoding, and the factor to table units."""

    address: int
    data_type: DataType
    word_order: WordOrder = "high_first"
    scale: float = 1.0

    @property
    def width(self) -> int:
        """Registers the value occupies."""
        return _WIDTH[self.data_type]


@dataclass(frozen=True, slots=True)
class ReadBlock:
    """One read request: `count` registers from `address`."""

    address: int
    count: int


@dataclass(frozen=True, slots=True)
class RegisterMap:
    """A meter model's registers: function code, poll period and one spec per delivered quantity."""

    name: str
    function_code: FunctionCode
    poll_interval_s: float
    registers: Mapping[str, RegisterSpec]
    max_registers_per_read: int = MAX_REGISTERS_PER_READ

    def read_blocks(self) -> tuple[ReadBlock, ...]:
        """The fewest reads (≤ max_registers_per_read, gaps ≤ MAX_GAP_REGISTERS) covering every register."""
        blocks: list[ReadBlock] = []
        for spec in sorted(self.registers.values(), key=lambda s: s.address):
            end = spec.address + spec.width
            if blocks:
                last = blocks[-1]
                last_end = last.address + last.count
                fits = end - last.address <= self.max_registers_per_read
                if spec.address - last_end <= MAX_GAP_REGISTERS and fits:
                    blocks[-1] = ReadBlock(last.address, max(last_end, end) - last.address)
                    continue
            blocks.append(ReadBlock(spec.address, spec.width))
        return tuple(blocks)


def decode_value(spec: RegisterSpec, words: Sequence[int]) -> float:
    """One value from its `spec.width` registers, times `spec.scale`."""
    ordered = list(words) if spec.word_order == "high_first" else list(reversed(words))
    raw = b"".join(word.to_bytes(2, "big") for word in ordered)
    value: float = struct.unpack(_STRUCT[spec.data_type], raw)[0]
    return value * spec.scale


def encode_value(spec: RegisterSpec, value: float) -> list[int]:
    """The registers a device sends for `value` in table units (the inverse of `decode_value`)."""
    scaled = value / spec.scale
    raw = struct.pack(_STRUCT[spec.data_type], scaled if spec.data_type == "float32" else round(scaled))
    words = [int.from_bytes(raw[i : i + 2], "big") for i in range(0, len(raw), 2)]
    return words if spec.word_order == "high_first" else list(reversed(words))


def decode_blocks(register_map: RegisterMap, replies: Mapping[int, Sequence[int]]) -> dict[str, float]:
    """Every mapped quantity from the replies to `read_blocks()` (keyed by block address).

    ValueError when a reply is missing or shorter than its block.
    """
    blocks = register_map.read_blocks()
    values: dict[str, float] = {}
    for key, spec in register_map.registers.items():
        block = next(b for b in blocks if b.address <= spec.address < b.address + b.count)
        words = replies.get(block.address)
        if words is None or len(words) != block.count:
            raise ValueError(f"reply for registers {block.address}+{block.count} missing or of wrong length")
        offset = spec.address - block.address
        values[key] = decode_value(spec, words[offset : offset + spec.width])
    return values
