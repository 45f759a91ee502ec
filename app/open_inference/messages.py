"""The gRPC messages, built from ``open_inference.binpb`` (compiled from ``open_inference.proto``, ``make protos``)
in a descriptor pool of their own: the protocol's message names (``inference.ModelInferRequest``, ...) then never
clash with another copy of them in the same process, such as the one Triton's client registers."""

from __future__ import annotations

from pathlib import Path

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

DESCRIPTOR_SET = Path(__file__).with_name("open_inference.binpb")
PACKAGE = "inference"

POOL = descriptor_pool.DescriptorPool()
for _file in descriptor_pb2.FileDescriptorSet.FromString(DESCRIPTOR_SET.read_bytes()).file:
    POOL.Add(_file)
SERVICE = POOL.FindServiceByName(f"{PACKAGE}.GRPCInferenceService")


def message(name: str) -> type:
    return message_factory.GetMessageClass(POOL.FindMessageTypeByName(f"{PACKAGE}.{name}"))


ServerLiveResponse = message("ServerLiveResponse")
ServerReadyResponse = message("ServerReadyResponse")
ModelReadyResponse = message("ModelReadyResponse")
ServerMetadataResponse = message("ServerMetadataResponse")
ModelMetadataResponse = message("ModelMetadataResponse")
ModelInferResponse = message("ModelInferResponse")
