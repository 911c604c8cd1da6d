"""Conversions between wire messages and plain Python values."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from google.protobuf import struct_pb2, timestamp_pb2

from reckon_server.clock import EPOCH

_MAX_SAFE_INT = 2**53
MIN_SECONDS, MAX_SECONDS = -62135596800, 253402300799
"""The range of valid Timestamp seconds (years 1 to 9999)."""


def valid_timestamp(stamp: timestamp_pb2.Timestamp) -> bool:
    """Whether a Timestamp is one a datetime can hold: the wire accepts any numbers."""
    return MIN_SECONDS <= stamp.seconds <= MAX_SECONDS and 0 <= stamp.nanos < 10**9


def known_enum(enum: Any, number: int, *, allow_zero: bool = False) -> bool:
    """Whether `number` names a value of `enum` (the wire carries any int32); UNSPECIFIED (0)
    only when `allow_zero`."""
    return (allow_zero or number != 0) and number in enum.DESCRIPTOR.values_by_number


def struct_to_dict(message: struct_pb2.Struct) -> dict[str, Any]:
    return {key: value_to_python(value) for key, value in message.fields.items()}


def value_to_python(value: struct_pb2.Value) -> Any:
    kind = value.WhichOneof("kind")
    if kind == "struct_value":
        return struct_to_dict(value.struct_value)
    if kind == "list_value":
        return [value_to_python(v) for v in value.list_value.values]
    if kind == "number_value":
        number = value.number_value
        # JSON has one number type; integral values come back as ints so that 14200 stays
        # 14200 in exports and hashes, not 14200.0.
        if number.is_integer() and abs(number) < _MAX_SAFE_INT:
            return int(number)
        return number
    if kind == "string_value":
        return value.string_value
    if kind == "bool_value":
        return value.bool_value
    return None


def dict_to_struct(document: dict[str, Any] | None) -> struct_pb2.Struct:
    message = struct_pb2.Struct()
    if document:
        message.update(document)
    return message


def python_to_value(value: Any) -> struct_pb2.Value:
    message = struct_pb2.Value()
    if value is None:
        message.null_value = struct_pb2.NULL_VALUE
    elif isinstance(value, bool):
        message.bool_value = value
    elif isinstance(value, int | float):
        message.number_value = value
    elif isinstance(value, str):
        message.string_value = value
    elif isinstance(value, dict):
        message.struct_value.update(value)
    else:
        message.list_value.extend(value)
    return message


def to_timestamp(moment: datetime | None) -> timestamp_pb2.Timestamp | None:
    if moment is None:
        return None
    if moment.tzinfo is not None:
        # Exact for aware times and several times cheaper than FromDatetime, which every
        # response pays for.
        since = moment - EPOCH
        return timestamp_pb2.Timestamp(
            seconds=since.days * 86_400 + since.seconds, nanos=since.microseconds * 1000
        )
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(moment)
    return stamp


def from_timestamp(stamp: timestamp_pb2.Timestamp) -> datetime:
    return stamp.ToDatetime(tzinfo=UTC)
