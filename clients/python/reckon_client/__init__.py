"""Reckon's Python client."""

from reckon_client.client import GateResult, Reckon
from reckon_client.delivery import DeliveryStreamer
from reckon_client.errors import ReckonError
from reckon_client.money import from_micros, to_micros

__all__ = ["DeliveryStreamer", "GateResult", "Reckon", "ReckonError", "from_micros", "to_micros"]
