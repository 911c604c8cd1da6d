"""The generated stubs carry the whole contract, and the server implements all of it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from google.protobuf import descriptor_pb2

from reckon.v1 import (
    admin_service_pb2,
    audit_service_pb2,
    delivery_service_pb2,
    error_reason_pb2,
    governance_service_pb2,
    types_pb2,
)
from reckon_server.transport.servicers.admin import AdminServicer
from reckon_server.transport.servicers.audit import AuditServicer
from reckon_server.transport.servicers.delivery import DeliveryServicer
from reckon_server.transport.servicers.governance import GovernanceServicer

ROOT = Path(__file__).resolve().parents[2]
MODULES = (
    admin_service_pb2,
    audit_service_pb2,
    delivery_service_pb2,
    error_reason_pb2,
    governance_service_pb2,
    types_pb2,
)


def test_generated_python_messages_have_every_field_of_the_protos(tmp_path: Path) -> None:
    image = tmp_path / "image.binpb"
    subprocess.run(
        [str(Path(sys.executable).with_name("buf")), "build", "-o", str(image)],
        cwd=ROOT,
        check=True,
    )
    built = descriptor_pb2.FileDescriptorSet.FromString(image.read_bytes())
    expected = {}
    for file in built.file:
        if file.package != "reckon.v1":
            continue
        for message in file.message_type:
            expected[f"reckon.v1.{message.name}"] = {f.name for f in message.field}
    generated = {}
    for module in MODULES:
        for name, message in module.DESCRIPTOR.message_types_by_name.items():
            generated[f"reckon.v1.{name}"] = set(message.fields_by_name)
    assert generated == expected


def test_every_rpc_has_a_servicer_method_and_nothing_else_is_served() -> None:
    for module, service, servicer in (
        (audit_service_pb2, "AuditService", AuditServicer),
        (admin_service_pb2, "AdminService", AdminServicer),
        (governance_service_pb2, "GovernanceService", GovernanceServicer),
        (delivery_service_pb2, "DeliveryService", DeliveryServicer),
    ):
        rpcs = {m.name for m in module.DESCRIPTOR.services_by_name[service].methods}
        implemented = {name for name in vars(servicer) if name[0].isupper()}
        assert implemented == rpcs, service
