"""The Open Inference Protocol as its real clients speak it: Triton's own ``tritonclient`` (HTTP and gRPC, sync and
async) against ``stacking serve`` on loopback, and the messages checked against the ones that client ships."""

from __future__ import annotations

import asyncio
import base64
import gzip
import json
import signal
import socket
import subprocess
import sys

import grpc
import httpx
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as grpcclient_aio
import tritonclient.http as httpclient
import tritonclient.http.aio as httpclient_aio
from google.protobuf import descriptor_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException

from app.errors import ServiceError
from app.open_inference import messages
from app.open_inference.protocol import image_files
from app.open_inference.tensors import pack_bytes, unpack_bytes
from app.settings import Settings
from tests.conftest import Server, free_port
from tests.test_service import png_bytes

KEY = {"x-api-key": "s3cret"}  # tritonclient adds to the headers it is given: pass copies ({**KEY})
MAX_FILES = 4


# ---- the messages and the tensor encoding (no server) ----


def test_the_committed_descriptor_set_is_the_proto_compiled(tmp_path):
    """``make protos`` output is what the server loads: a .proto edited without recompiling fails here."""
    out = tmp_path / "set.binpb"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "grpc_tools.protoc",
            f"-I{messages.DESCRIPTOR_SET.parent}",
            f"--descriptor_set_out={out}",
            str(messages.DESCRIPTOR_SET.with_suffix(".proto")),
        ],
        check=True,
    )
    compiled = descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes())
    assert compiled == descriptor_pb2.FileDescriptorSet.FromString(messages.DESCRIPTOR_SET.read_bytes())


def _same_fields(ours, theirs, path: str) -> None:
    for field in ours.fields:
        other = theirs.fields_by_name.get(field.name)
        assert other is not None, f"{path}.{field.name} is not in Triton's protocol"
        assert (field.number, field.type, field.is_repeated) == (other.number, other.type, other.is_repeated), (
            f"{path}.{field.name}"
        )
        if field.message_type is not None:
            _same_fields(field.message_type, other.message_type, f"{path}.{field.name}")


def test_every_message_is_the_protocols_field_by_field():
    """Our messages against the descriptors Triton's client is built from (both loaded in one process, too)."""
    ours = messages.POOL.FindFileByName("open_inference.proto")
    for name, message in ours.message_types_by_name.items():
        _same_fields(message, service_pb2.DESCRIPTOR.message_types_by_name[name], name)
    theirs = service_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"]
    assert messages.SERVICE.full_name == theirs.full_name == "inference.GRPCInferenceService"
    for method in messages.SERVICE.methods:
        other = theirs.methods_by_name[method.name]
        assert (method.input_type.full_name, method.output_type.full_name) == (
            other.input_type.full_name,
            other.output_type.full_name,
        )
    assert {m.name for m in messages.SERVICE.methods} == {
        "ServerLive",
        "ServerReady",
        "ModelReady",
        "ServerMetadata",
        "ModelMetadata",
        "ModelInfer",
    }


def test_bytes_elements_round_trip_and_a_cut_short_tensor_is_named():
    items = [b"", b"\x89PNG\r\n", bytes(range(256)) * 3]
    assert unpack_bytes(pack_bytes(items), "x") == items
    packed = pack_bytes(items)
    with pytest.raises(ServiceError, match=r"inputs\[0\]: element 2 says 768 bytes but only 767 are left"):
        unpack_bytes(packed[:-1], "inputs[0]")
    with pytest.raises(ServiceError, match="element 1 is cut short"):
        unpack_bytes(packed[:6], "inputs[0]")
    png = png_bytes()
    assert image_files([png, base64.b64encode(png)]) == [png, png]  # raw file, or its base64 text


def test_grpc_is_off_unless_a_port_is_given(monkeypatch):
    monkeypatch.delenv("STACKSERVE_GRPC_PORT", raising=False)
    assert Settings().grpc_port is None
    monkeypatch.setenv("STACKSERVE_GRPC_PORT", "")  # set but empty, as `docker run -e STACKSERVE_GRPC_PORT=` leaves it
    assert Settings().grpc_port is None
    monkeypatch.setenv("STACKSERVE_GRPC_PORT", "8001")
    assert Settings().grpc_port == 8001
    monkeypatch.setenv("STACKSERVE_GRPC_PORT", "http")
    with pytest.raises(ValueError, match="grpc_port"):
        Settings()


# ---- against a real server ----


@pytest.fixture(scope="module")
def oip(tiny_bundle):
    """The tiny bundle with gRPC on, an API key, small limits, and one image (3 views) per compiled call, so that
    an image's answer cannot depend on its batch companions."""
    grpc_port = free_port()
    server = Server(
        tiny_bundle,
        {
            "STACKSERVE_GRPC_PORT": str(grpc_port),
            "STACKSERVE_API_KEY": "s3cret",
            "STACKSERVE_MAX_FILES": str(MAX_FILES),
            "STACKSERVE_MAX_TTA": "4",
            "STACKSERVE_MAX_BODY_BYTES": "300000",
            "STACKSERVE_CALL_ROWS": "3",
            "STACKSERVE_MAX_PIXELS": "20000",
        },
    )
    try:
        server.wait_ready()
        server.grpc_url = f"127.0.0.1:{grpc_port}"
        server.http = httpclient.InferenceServerClient(f"127.0.0.1:{server.port}")
        server.grpc = grpcclient.InferenceServerClient(server.grpc_url)
        yield server
    finally:
        server.stop()


def digit_images(digits_dir, n: int) -> list[bytes]:
    return [p.read_bytes() for p in sorted((digits_dir / "test").glob("*.png"))[:n]]


def v1_probabilities(server, images: list[bytes], **params) -> np.ndarray:
    response = httpx.post(
        f"{server.url}/v1/predict",
        params=params,
        headers=KEY,
        timeout=60,
        files=[("files", (f"{i}.png", data, "image/png")) for i, data in enumerate(images)],
    )
    assert response.status_code == 200, response.text
    return np.array([list(p["probabilities"].values()) for p in response.json()["predictions"]])


def images_input(module, images: list, binary: bool = True):
    """The ``images`` tensor for ``module``'s client; ``binary`` is HTTP's choice (gRPC has one encoding)."""
    tensor = module.InferInput("images", [len(images)], "BYTES")
    array = np.array(images, dtype=object)
    if module in (grpcclient, grpcclient_aio):
        return tensor.set_data_from_numpy(array)
    return tensor.set_data_from_numpy(array, binary_data=binary)


def test_live_ready_and_metadata_through_both_clients(oip, tiny_bundle):
    name = tiny_bundle.name
    for client in (oip.http, oip.grpc):
        assert client.is_server_live() and client.is_server_ready() and client.is_model_ready(name)
    assert not oip.http.is_model_ready("other")
    rest = oip.http.get_model_metadata(name, headers={**KEY})
    assert set(rest) == {"name", "versions", "platform", "inputs", "outputs"}  # the protocol's fields, no others
    assert rest["inputs"] == [{"name": "images", "datatype": "BYTES", "shape": [-1]}]
    assert rest["outputs"] == [
        {"name": "probabilities", "datatype": "FP64", "shape": [-1, 10]},
        {"name": "label", "datatype": "BYTES", "shape": [-1]},
    ]
    grpc_meta = oip.grpc.get_model_metadata(name, headers={**KEY})
    assert (grpc_meta.name, list(grpc_meta.versions), grpc_meta.platform) == (name, rest["versions"], "stackserve")
    assert [(t.name, t.datatype, list(t.shape)) for t in grpc_meta.outputs] == [
        (t["name"], t["datatype"], t["shape"]) for t in rest["outputs"]
    ]
    assert oip.http.get_model_metadata(name, model_version=rest["versions"][0], headers={**KEY}) == rest
    server_meta = oip.http.get_server_metadata()
    assert set(server_meta) == {"name", "version", "extensions"} and "binary_tensor_data" in server_meta["extensions"]
    assert oip.grpc.get_server_metadata().extensions == server_meta["extensions"]
    assert httpx.get(f"{oip.url}/v2/health/ready").json() == {"ready": True}
    assert httpx.get(f"{oip.url}/v2/health/live").json() == {"live": True}
    assert httpx.get(f"{oip.url}/v2/models/{name}/ready").json() == {"name": name, "ready": True}
    with grpc.insecure_channel(oip.grpc_url) as channel:  # standard gRPC health checking, overall and per service
        health = health_pb2_grpc.HealthStub(channel)
        for service in ("", "inference.GRPCInferenceService"):
            status = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=10).status
            assert status == health_pb2.HealthCheckResponse.SERVING


def test_every_transport_gives_the_same_answer(oip, digits_dir, tiny_bundle):
    name, images = tiny_bundle.name, digit_images(digits_dir, 3)
    v1 = v1_probabilities(oip, images, tta=2)
    labels = [str(k) for k in v1.argmax(axis=1)]
    tta = {"tta": 2}
    answers = {}
    # JSON both ways: the user base64-encodes each file; outputs asked for as JSON.
    json_outputs = [httpclient.InferRequestedOutput(n, binary_data=False) for n in ("probabilities", "label")]
    encoded = [base64.b64encode(i) for i in images]
    answers["json"] = oip.http.infer(
        name,
        [images_input(httpclient, encoded, binary=False)],
        outputs=json_outputs,
        parameters=tta,
        headers={**KEY},
        request_id="r1",
    )
    # The client's default: binary tensors both ways, the raw files as BYTES elements; and their base64 text.
    answers["binary"] = oip.http.infer(
        name, [images_input(httpclient, images, binary=True)], parameters=tta, headers={**KEY}
    )
    answers["binary base64"] = oip.http.infer(
        name, [images_input(httpclient, encoded, binary=True)], parameters=tta, headers={**KEY}
    )
    answers["binary gzip"] = oip.http.infer(
        name,
        [images_input(httpclient, images, binary=True)],
        parameters=tta,
        headers={**KEY},
        request_compression_algorithm="gzip",
    )
    answers["grpc"] = oip.grpc.infer(name, [images_input(grpcclient, images)], parameters=tta, headers={**KEY})
    # As KServe's clients send it: the elements in contents.bytes_contents, through Triton's own generated stub.
    request = service_pb2.ModelInferRequest(
        model_name=name, parameters={"tta": service_pb2.InferParameter(int64_param=2)}
    )
    request.inputs.add(name="images", datatype="BYTES", shape=[len(images)]).contents.bytes_contents.extend(images)
    with grpc.insecure_channel(oip.grpc_url) as channel:
        reply = service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request, metadata=tuple(KEY.items()))
    answers["grpc contents"] = grpcclient.InferResult(reply)
    for how, result in answers.items():
        probabilities = result.as_numpy("probabilities")
        assert probabilities.dtype == np.float64, how
        np.testing.assert_array_equal(probabilities, v1, err_msg=how)  # the same call shape: the same bits
        # The client gives JSON BYTES back as str, binary ones as bytes.
        assert [
            str(label, "utf-8") if isinstance(label, bytes) else label for label in result.as_numpy("label")
        ] == labels, how
    rest = answers["json"].get_response()
    assert rest["id"] == "r1" and rest["model_name"] == name
    assert all(o["parameters"] == {"served_by": "stack,stack,stack", "cost_views": "4,4,4"} for o in rest["outputs"])
    grpc_outputs = answers["grpc"].get_response().outputs
    assert [o.parameters["served_by"].string_param for o in grpc_outputs] == ["stack,stack,stack"] * 2
    only = oip.grpc.infer(
        name,
        [images_input(grpcclient, images[:1])],
        headers={**KEY},
        outputs=[grpcclient.InferRequestedOutput("label")],
    )
    assert [o.name for o in only.get_response().outputs] == ["label"] and only.as_numpy("probabilities") is None


def test_classification_and_compressed_answers(oip, digits_dir, tiny_bundle):
    """Triton's classification extension (``class_count``) and gzip both ways, through the client."""
    name, images = tiny_bundle.name, digit_images(digits_dir, MAX_FILES)
    v1 = v1_probabilities(oip, images)
    top3 = np.argsort(-v1, axis=1, kind="stable")[:, :3]
    for module, client in ((httpclient, oip.http), (grpcclient, oip.grpc)):
        result = client.infer(
            name,
            [images_input(module, images)],
            outputs=[module.InferRequestedOutput("probabilities", class_count=3)],
            headers={**KEY},
        )
        entries = [[item.decode().split(":") for item in row] for row in result.as_numpy("probabilities")]
        assert [[int(k) for _, k, _ in row] for row in entries] == top3.tolist()
        assert [[label for _, _, label in row] for row in entries] == [[str(k) for k in row] for row in top3]
        np.testing.assert_allclose(
            [[float(v) for v, _, _ in row] for row in entries], np.take_along_axis(v1, top3, axis=1), atol=1e-6
        )  # "%f": six decimals
    outputs = [httpclient.InferRequestedOutput(n, binary_data=False) for n in ("probabilities", "label")]
    plain, zipped = (
        oip.http.infer(
            name,
            [images_input(httpclient, images, binary=True)],
            outputs=outputs,
            headers={**KEY},
            response_compression_algorithm=how,
        )
        for how in (None, "gzip")
    )
    np.testing.assert_array_equal(zipped.as_numpy("probabilities"), plain.as_numpy("probabilities"))
    raw = httpx.post(
        f"{oip.url}/v2/models/{name}/infer",
        headers={**KEY, "Accept-Encoding": "gzip"},
        timeout=60,
        json={
            "inputs": [
                {
                    "name": "images",
                    "shape": [len(images)],
                    "datatype": "BYTES",
                    "data": [base64.b64encode(i).decode() for i in images],
                }
            ]
        },
    )
    assert raw.headers["content-encoding"] == "gzip" and len(raw.json()["outputs"]) == 2


def test_a_json_body_needs_no_content_type_and_errors_take_the_protocols_shape(oip, digits_dir, tiny_bundle):
    body = {
        "inputs": [
            {
                "name": "images",
                "shape": [1],
                "datatype": "BYTES",
                "data": [base64.b64encode(digit_images(digits_dir, 1)[0]).decode()],
            }
        ]
    }
    url = f"{oip.url}/v2/models/{tiny_bundle.name}/infer"
    plain = httpx.post(url, content=json.dumps(body).encode(), headers=KEY, timeout=60)  # no Content-Type at all
    assert "content-type" not in plain.request.headers and plain.status_code == 200, plain.text
    assert [o["name"] for o in plain.json()["outputs"]] == ["probabilities", "label"]
    for headers, status, text in (({}, 401, "X-API-Key"), (KEY, 404, "not served here")):
        error = httpx.post(
            url.replace(tiny_bundle.name, "other") if status == 404 else url, json=body, headers=headers, timeout=60
        )
        assert error.status_code == status and set(error.json()) == {"error"} and text in error.json()["error"]
    v1 = httpx.get(f"{oip.url}/v1/model")  # /v1 keeps its own shape
    assert v1.status_code == 401 and set(v1.json()["error"]) == {"code", "message"}
    zipped = httpx.post(
        url, content=gzip.compress(json.dumps(body).encode()), headers={**KEY, "Content-Encoding": "gzip"}, timeout=60
    )
    assert zipped.status_code == 200 and zipped.json()["outputs"] == plain.json()["outputs"]


def _big_png() -> bytes:
    return png_bytes(size=200)  # 40,000 pixels, past this server's max_pixels


@pytest.mark.parametrize(
    "case, http_status, grpc_code, text",
    [
        ("unknown model", "404", "NOT_FOUND", "model 'other' is not served here"),
        ("corrupt image", "400", "INVALID_ARGUMENT", "images[1]: not a readable image"),
        ("too many images", "413", "RESOURCE_EXHAUSTED", f"the limit is {MAX_FILES}"),
        ("wrong datatype", "400", "INVALID_ARGUMENT", "inputs[0].datatype: 'FP32'; input 'images' is BYTES"),
        ("too many pixels", "400", "INVALID_ARGUMENT", "images[0]: image of 200x200 pixels exceeds the limit of 20000"),
        ("too many views", "422", "INVALID_ARGUMENT", "tta: 9 views asked for; this service allows at most 4"),
        ("no key", "401", "UNAUTHENTICATED", "x-api-key"),
    ],
)
def test_errors_reach_the_user_through_both_clients(oip, digits_dir, tiny_bundle, case, http_status, grpc_code, text):
    images, name, headers, parameters = digit_images(digits_dir, 2), tiny_bundle.name, {**KEY}, None
    if case == "unknown model":
        name = "other"
    elif case == "corrupt image":
        images[1] = b"\x89PNG but not really"
    elif case == "too many images":
        images = images * 3
    elif case == "too many pixels":
        images = [_big_png()]
    elif case == "too many views":
        parameters = {"tta": 9}
    elif case == "no key":
        headers = {}
    for module, client in ((httpclient, oip.http), (grpcclient, oip.grpc)):
        if case == "wrong datatype":
            tensor = module.InferInput("images", [2], "FP32").set_data_from_numpy(np.zeros(2, np.float32))
        else:
            tensor = images_input(module, images)
        with pytest.raises(InferenceServerException) as raised:
            client.infer(name, [tensor], headers=dict(headers), parameters=parameters)
        shown = str(raised.value)  # what the client prints: the status and the server's reason
        assert text.lower() in shown.lower(), shown
        assert (http_status if module is httpclient else f"StatusCode.{grpc_code}") in shown, shown
    assert oip.http.is_server_ready()  # and nothing of it hurt the server


def test_a_body_over_the_limit_is_refused_on_both_transports(oip, tiny_bundle):
    too_big = [b"\0" * 400_000]  # past this server's 300,000-byte limit: refused before any of it is decoded
    with pytest.raises(InferenceServerException, match=r"\[413\] request body of \d+ bytes exceeds the limit"):
        oip.http.infer(tiny_bundle.name, [images_input(httpclient, too_big, binary=True)], headers={**KEY})
    with pytest.raises(InferenceServerException, match="RESOURCE_EXHAUSTED.*larger than max"):
        oip.grpc.infer(tiny_bundle.name, [images_input(grpcclient, too_big)], headers={**KEY})


def test_concurrent_calls_from_the_async_clients_equal_sequential_ones(oip, digits_dir, tiny_bundle):
    name, images = tiny_bundle.name, digit_images(digits_dir, 12)
    alone = np.concatenate([v1_probabilities(oip, [image]) for image in images])

    async def together() -> tuple[list, list]:
        rest = httpclient_aio.InferenceServerClient(f"127.0.0.1:{oip.port}")
        rpc = grpcclient_aio.InferenceServerClient(oip.grpc_url)
        try:
            return await asyncio.gather(
                asyncio.gather(
                    *(
                        rest.infer(name, [images_input(httpclient_aio, [i], binary=True)], headers={**KEY})
                        for i in images
                    )
                ),
                asyncio.gather(
                    *(rpc.infer(name, [images_input(grpcclient_aio, [i])], headers={**KEY}) for i in images)
                ),
            )
        finally:
            await rest.close()
            await rpc.close()

    for results in asyncio.run(together()):
        np.testing.assert_array_equal(np.concatenate([r.as_numpy("probabilities") for r in results]), alone)


def _body(**changes) -> dict:
    body = {
        "inputs": [
            {"name": "images", "shape": [1], "datatype": "BYTES", "data": [base64.b64encode(png_bytes()).decode()]}
        ]
    }
    body.update(changes)
    return body


def _one_input(**changes) -> dict:
    return _body(inputs=[{**_body()["inputs"][0], **changes}])


@pytest.mark.parametrize(
    "content, status, text",
    [
        (b"{not json", 400, "request body: not JSON"),
        (_one_input(data=["%%%"]), 400, "inputs[0].data[0]: not base64"),
        (_one_input(shape=[5]), 400, "inputs[0].shape [5] does not match its 1 elements"),
        (_one_input(name="pixels"), 400, "inputs[0].name: 'pixels' is not an input of this model"),
        (_one_input(shape=[1, 2, 3]), 400, "inputs[0].shape: [1, 2, 3]"),
        (_body(outputs=[{"name": "logits"}]), 400, "outputs: unknown ['logits']"),
        (_body(outputs=[{"name": "label", "parameters": {"classification": 3}}]), 400, "classification"),
        (_body(parameters={"tta_policy": "spin"}), 422, "parameters.tta_policy: 'spin' is not one of"),
        (_body(inputs=[]), 400, "inputs: List should have at least 1 item"),
        (_one_input(data=None, parameters={"binary_data_size": 10}), 400, "binary_data_size: 10; the body has 0"),
        (_one_input(data=None), 400, "inputs[0]: no data"),
    ],
    ids=[
        "not-json",
        "not-base64",
        "shape-count",
        "input-name",
        "shape-rank",
        "output",
        "classification",
        "policy",
        "no-inputs",
        "binary-size",
        "no-data",
    ],
)
def test_bad_rest_requests_are_refused_naming_the_field(oip, tiny_bundle, content, status, text):
    raw = content if isinstance(content, bytes) else json.dumps(content).encode()
    response = httpx.post(f"{oip.url}/v2/models/{tiny_bundle.name}/infer", content=raw, headers=KEY, timeout=60)
    assert response.status_code == status, response.text
    assert set(response.json()) == {"error"} and text in response.json()["error"], response.text


def test_binary_framing_errors_are_refused(oip, tiny_bundle):
    header = json.dumps(_body()).encode()
    for length, text in (
        (len(header), "5 bytes after the JSON header that no input's binary_data_size claims"),
        (len(header) + 99, f"Inference-Header-Content-Length: '{len(header) + 99}' is not"),
    ):
        response = httpx.post(
            f"{oip.url}/v2/models/{tiny_bundle.name}/infer",
            content=header + b"extra",
            headers={**KEY, "Inference-Header-Content-Length": str(length)},
            timeout=60,
        )
        assert response.status_code == 400 and text in response.json()["error"], response.text


def test_sigterm_stops_http_and_grpc_cleanly(tiny_bundle):
    grpc_port = free_port()
    server = Server(tiny_bundle, {"STACKSERVE_GRPC_PORT": str(grpc_port)})
    try:
        server.wait_ready()
        client = grpcclient.InferenceServerClient(f"127.0.0.1:{grpc_port}")
        assert client.is_server_live()
        server.process.terminate()
        # uvicorn shuts down (the lifespan stops gRPC with a grace period), then re-raises the signal it handled.
        assert server.process.wait(timeout=60) in (0, -signal.SIGTERM)
        log = server.process.stdout.read()
        assert "Application shutdown complete" in log and "Finished server process" in log
        with pytest.raises(InferenceServerException, match="UNAVAILABLE"):
            client.is_server_live()  # the gRPC port closed with the process
    finally:
        server.stop()


def test_a_grpc_port_in_use_stops_the_server_saying_so(tiny_bundle):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        server = Server(tiny_bundle, {"STACKSERVE_GRPC_PORT": str(taken.getsockname()[1])})
        try:
            assert server.process.wait(timeout=120) != 0
            assert f"--grpc-port: cannot listen on 127.0.0.1:{taken.getsockname()[1]}" in server.process.stdout.read()
        finally:
            server.stop()
