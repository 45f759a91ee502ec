"""The binary tensor data extension's encoding: little-endian, row-major, and each ``BYTES`` element a 4-byte
little-endian length followed by its bytes. gRPC's ``raw_input_contents`` / ``raw_output_contents`` use the same."""

from __future__ import annotations

import struct
from collections.abc import Iterable

import numpy as np

from app.errors import ServiceError

LENGTH = struct.Struct("<I")


def unpack_bytes(raw: bytes, where: str) -> list[bytes]:
    """The elements of a serialized ``BYTES`` tensor; a truncated one is refused, naming ``where`` and the element."""
    items, offset, view = [], 0, memoryview(raw)
    while offset < len(raw):
        if offset + LENGTH.size > len(raw):
            raise ServiceError(
                400,
                f"{where}: element {len(items)} is cut short: its 4-byte length needs "
                f"{offset + LENGTH.size - len(raw)} more byte(s)",
            )
        (size,) = LENGTH.unpack_from(view, offset)
        offset += LENGTH.size
        if offset + size > len(raw):
            raise ServiceError(
                400, f"{where}: element {len(items)} says {size} bytes but only {len(raw) - offset} are left"
            )
        items.append(bytes(view[offset : offset + size]))
        offset += size
    return items


def pack_bytes(items: Iterable[bytes]) -> bytes:
    return b"".join(LENGTH.pack(len(item)) + item for item in items)


def raw_contents(datatype: str, values: np.ndarray) -> bytes:
    """A tensor's bytes in the extension's encoding (the datatypes this service answers with)."""
    if datatype == "BYTES":
        return pack_bytes(values.ravel())
    if datatype == "FP64":
        return np.ascontiguousarray(values, dtype="<f8").tobytes()
    raise ValueError(f"no binary encoding for {datatype}")
