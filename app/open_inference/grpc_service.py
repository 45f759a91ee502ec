"""The Open Inference Protocol over gRPC: KServe's and Triton's ``inference.GRPCInferenceService`` (ServerLive,
ServerReady, ModelReady, ServerMetadata, ModelMetadata, ModelInfer) and the standard ``grpc.health.v1.Health``.

Served by ``grpc.aio`` on ``--grpc-port`` in the HTTP server's process and event loop, so every image goes through
the same admission, decoders and batcher as ``/v1`` and ``/v2``. The service's errors map onto gRPC's codes:
a bad request ``INVALID_ARGUMENT``, too many images or bytes ``RESOURCE_EXHAUSTED``, a full queue or a model not
loaded ``UNAVAILABLE``. The other methods of Triton's service answer ``UNIMPLEMENTED``, as gRPC does by itself.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio

from app import metrics
from app.errors import ServiceError
from app.inference import Serving
from app.open_inference import messages, protocol
from app.open_inference.tensors import raw_contents, unpack_bytes

logger = logging.getLogger("stackserve")

STATUS = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    401: grpc.StatusCode.UNAUTHENTICATED,
    404: grpc.StatusCode.NOT_FOUND,
    413: grpc.StatusCode.RESOURCE_EXHAUSTED,
    415: grpc.StatusCode.INVALID_ARGUMENT,
    422: grpc.StatusCode.INVALID_ARGUMENT,
    499: grpc.StatusCode.CANCELLED,
    503: grpc.StatusCode.UNAVAILABLE,
}
DEADLINE = {"deadline_exceeded": grpc.StatusCode.DEADLINE_EXCEEDED}
HEALTH_POLL_S = 0.2  # how often readiness is copied into the health service (it changes in the loading thread)

Handler = Callable[[object, grpc.aio.ServicerContext], Awaitable[object]]


def grpc_status(error: ServiceError) -> grpc.StatusCode:
    return DEADLINE.get(error.code) or STATUS.get(error.status, grpc.StatusCode.INTERNAL)


def parameter_values(parameters) -> dict[str, object]:
    """A protocol ``map<string, InferParameter>`` as plain values."""
    values = {}
    for key, parameter in parameters.items():
        kind = parameter.WhichOneof("parameter_choice")
        values[key] = getattr(parameter, kind) if kind else None
    return values


class InferenceService:
    """The six methods, each an ``async`` handler taking the request message and the call's context."""

    def __init__(self, serving: Serving):
        self.serving = serving

    async def ServerLive(self, request, context):
        return messages.ServerLiveResponse(live=True)

    async def ServerReady(self, request, context):
        return messages.ServerReadyResponse(ready=self.serving.state.ready)

    async def ModelReady(self, request, context):
        if self.serving.state.predictor is None:  # still loading (or failed): not ready, whatever the name
            return messages.ModelReadyResponse(ready=False)
        protocol.served_model(self.serving.state.predictor, request.name, request.version)
        return messages.ModelReadyResponse(ready=self.serving.state.ready)

    async def ServerMetadata(self, request, context):
        return messages.ServerMetadataResponse(**protocol.server_metadata())

    async def ModelMetadata(self, request, context):
        return messages.ModelMetadataResponse(
            **protocol.model_metadata(protocol.served_model(self.serving.predictor(), request.name, request.version))
        )

    async def ModelInfer(self, request, context):
        model = protocol.served_model(self.serving.predictor(), request.model_name, request.model_version)
        protocol.check_inputs([(t.name, t.datatype, list(t.shape)) for t in request.inputs])
        if request.raw_input_contents:
            if len(request.raw_input_contents) != len(request.inputs):
                raise ServiceError(
                    400,
                    f"raw_input_contents: {len(request.raw_input_contents)} entries for {len(request.inputs)} input(s)",
                )
            elements = unpack_bytes(request.raw_input_contents[0], "raw_input_contents[0]")
        else:
            elements = request.inputs[0].contents.bytes_contents
        images = protocol.image_files(elements)
        protocol.check_count(list(request.inputs[0].shape), len(images))
        names = protocol.requested_outputs([o.name for o in request.outputs])
        classification = {
            o.name: protocol.read_classification(i, o.name, values["classification"], len(model.classes))
            for i, o in enumerate(request.outputs)
            if "classification" in (values := parameter_values(o.parameters))
        }
        options = protocol.read_parameters(parameter_values(request.parameters))
        remaining = context.time_remaining()  # the client's gRPC deadline, if it set one
        if remaining is not None:
            options.timeout_s = min(remaining, options.timeout_s or remaining)
        # A client that cancels cancels this handler: its jobs are then dropped before the models.
        served = await protocol.infer(self.serving, model, images, options)
        response = messages.ModelInferResponse(model_name=model.name, model_version=model.version, id=request.id)
        for tensor in protocol.output_tensors(model, served.prediction, names, classification):
            output = response.outputs.add(name=tensor.name, datatype=tensor.datatype, shape=tensor.shape)
            for key, value in tensor.parameters.items():
                output.parameters[key].string_param = value
            response.raw_output_contents.append(raw_contents(tensor.datatype, tensor.values))
        context.set_trailing_metadata((("server-timing", served.server_timing()),))
        return response


KEYED = {"ModelMetadata", "ModelInfer"}  # as over HTTP: with api_key set, these need x-api-key metadata


def _guarded(name: str, handler: Handler, serving: Serving) -> Handler:
    """``handler`` with the API key check, errors as gRPC status codes, and the request metrics HTTP has."""

    async def guarded(request, context):
        started, code = time.perf_counter(), grpc.StatusCode.OK
        metrics.IN_FLIGHT.inc()
        try:
            if name in KEYED:
                given = dict(context.invocation_metadata() or ()).get("x-api-key", "")
                if not serving.key_matches(given):
                    raise ServiceError(401, "missing or wrong x-api-key metadata")
            return await handler(request, context)
        except ServiceError as exc:
            code = grpc_status(exc)
            await context.abort(code, exc.message)
        except asyncio.CancelledError:
            code = grpc.StatusCode.CANCELLED
            raise
        except Exception as exc:  # noqa: BLE001  logged; the client gets a status it can print, the server lives on
            logger.exception("unexpected error in %s", name, exc_info=exc)
            code = grpc.StatusCode.INTERNAL
            await context.abort(code, f"internal error ({type(exc).__name__}); see the server log")
        finally:
            metrics.IN_FLIGHT.dec()
            metrics.REQUESTS.labels(f"grpc {name}", code.name).inc()
            metrics.LATENCY.labels(f"grpc {name}").observe(time.perf_counter() - started)

    return guarded


def inference_handler(serving: Serving) -> grpc.GenericRpcHandler:
    service = InferenceService(serving)
    handlers = {}
    for method in messages.SERVICE.methods:
        request_type = messages.message(method.input_type.name)
        handlers[method.name] = grpc.unary_unary_rpc_method_handler(
            _guarded(method.name, getattr(service, method.name), serving),
            request_deserializer=request_type.FromString,
            response_serializer=lambda response: response.SerializeToString(),
        )
    return grpc.method_handlers_generic_handler(messages.SERVICE.full_name, handlers)


class GrpcServer:
    """The running gRPC server and the task that keeps its health service in step with the model's readiness."""

    def __init__(self, server: grpc.aio.Server, health: health_aio.HealthServicer, serving: Serving):
        self.server, self.health, self.serving = server, health, serving
        self._watch = asyncio.get_running_loop().create_task(self._follow_readiness(), name="grpc-health")

    async def _follow_readiness(self) -> None:
        shown = None
        while True:
            status = (
                health_pb2.HealthCheckResponse.SERVING
                if self.serving.state.ready
                else health_pb2.HealthCheckResponse.NOT_SERVING
            )
            if status != shown:
                for service in ("", messages.SERVICE.full_name):
                    await self.health.set(service, status)
                shown = status
            await asyncio.sleep(HEALTH_POLL_S)

    async def stop(self, grace_s: float) -> None:
        """Refuse new calls, let those in flight finish for up to ``grace_s``, then stop."""
        self._watch.cancel()
        await self.health.enter_graceful_shutdown()
        await self.server.stop(grace_s)


async def start_grpc_server(serving: Serving) -> GrpcServer:
    settings = serving.settings
    server = grpc.aio.server(
        options=[
            ("grpc.max_receive_message_length", settings.max_body_bytes),
            ("grpc.max_send_message_length", -1),
            ("grpc.so_reuseport", 0),
        ]
    )  # a port in use is an error, not a shared port
    server.add_generic_rpc_handlers((inference_handler(serving),))
    health = health_aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    address = f"{settings.host}:{settings.grpc_port}"
    try:
        server.add_insecure_port(address)
    except RuntimeError as exc:
        raise RuntimeError(f"--grpc-port: cannot listen on {address} ({exc})") from None
    await server.start()
    logger.info("gRPC (inference.GRPCInferenceService, grpc.health.v1.Health) on %s", address)
    return GrpcServer(server, health, serving)
