"""Hostile input against a real backend process: every case gets its status and error code, and the
server keeps answering ``/health`` afterwards."""

from __future__ import annotations

import io
import json
import warnings
import zipfile
from typing import Any, Callable, Optional

import numpy as np
import pytest

from segearth_backend.serve.protocol import BUNDLE_TYPE, write_bundle
from tests.backend.service_helpers import (
    CLASSES,
    SERVER_KINDS,
    TOKEN,
    ServerProcess,
    call,
    error_of,
    health,
    raw_request,
    segment_body,
    server_args,
    tiny_server_args,
)
from tests.helpers import zip_with_flag


@pytest.fixture(scope="module", params=SERVER_KINDS)
def server(request, parity_dir, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("hostile")
    process = ServerProcess([*tiny_server_args(parity_dir, tmp / "cache"), "--max-request-mb", "8",
                             *server_args(request.param)], tmp, env_extra={"SEGEARTH_BACKEND_TOKEN": TOKEN})
    yield process
    process.stop()
    assert "Traceback" not in process.log()  # nothing here is an internal error


def _image(height: int = 8, width: int = 8) -> np.ndarray:
    return np.zeros((height, width, 3), np.uint8)


def _zip(members: list[tuple[str, bytes]], compression: int = zipfile.ZIP_STORED) -> bytes:
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # duplicate names, on purpose
        with zipfile.ZipFile(buffer, "w", compression=compression) as archive:
            for name, data in members:
                archive.writestr(name, data)
    return buffer.getvalue()


def _npy(array: np.ndarray) -> bytes:
    data = io.BytesIO()
    np.save(data, array, allow_pickle=True)
    return data.getvalue()


def _npy_header(shape: tuple[int, ...], dtype: str, payload: bytes) -> bytes:
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)),
                                                  "fortran_order": False, "shape": shape})
    return header.getvalue() + payload


def _params(**fields: Any) -> bytes:
    return json.dumps({"classes": CLASSES, **fields}).encode()


def _with_params(params: bytes, image: Optional[np.ndarray] = None) -> bytes:
    return _zip([("params.json", params), ("image.npy", _npy(_image() if image is None else image))])


def _with_image(npy: bytes) -> bytes:
    return _zip([("params.json", _params()), ("image.npy", npy)])


NESTED = b"[" * 100000 + b"]" * 100000
DIGITS = "7" * 5000

# name, method, path, body factory, headers, expected status, expected code
Case = tuple[str, str, str, Callable[[], Optional[bytes]], dict[str, str], int, str]
AUTH = {"Authorization": f"Bearer {TOKEN}"}
BUNDLE = {**AUTH, "Content-Type": BUNDLE_TYPE}
JSON = {**AUTH, "Content-Type": "application/json"}

CASES: list[Case] = [
    # -- who may ask
    ("foreign Host", "GET", "/health", lambda: None, {"Host": "evil.example"}, 421, "bad_host"),
    ("rebinding Host with port", "POST", "/segment", lambda: segment_body(_image()),
     {**BUNDLE, "Host": "attacker.example:8765"}, 421, "bad_host"),
    ("loopback-looking Host", "GET", "/health", lambda: None, {"Host": "127.0.0.1.evil.example"}, 421, "bad_host"),
    ("Host with a bad port", "GET", "/health", lambda: None, {"Host": "localhost:http"}, 421, "bad_host"),
    ("web page Origin", "POST", "/segment", lambda: segment_body(_image()),
     {**BUNDLE, "Origin": "http://evil.example"}, 403, "bad_origin"),
    ("null Origin", "POST", "/classes/embed", lambda: b'{"classes": ["a"]}', {**JSON, "Origin": "null"},
     403, "bad_origin"),
    ("Origin on health", "GET", "/health", lambda: None, {"Origin": "https://evil.example"}, 403, "bad_origin"),
    ("Origin of a lookalike host", "GET", "/progress/x", lambda: None,
     {**AUTH, "Origin": "http://localhost.evil.example"}, 403, "bad_origin"),
    ("no token", "POST", "/segment", lambda: segment_body(_image()), {"Content-Type": BUNDLE_TYPE}, 401,
     "unauthorized"),
    ("wrong token", "POST", "/segment", lambda: segment_body(_image()),
     {"Content-Type": BUNDLE_TYPE, "Authorization": "Bearer nope"}, 401, "unauthorized"),
    ("basic auth", "POST", "/classes/embed", lambda: b'{"classes": ["a"]}',
     {"Content-Type": "application/json", "Authorization": "Basic dXNlcjpwYXNz"}, 401, "unauthorized"),
    ("progress without token", "GET", "/progress/abc", lambda: None, {}, 401, "unauthorized"),
    # -- content types
    ("segment as JSON", "POST", "/segment", lambda: segment_body(_image()), JSON, 415, "unsupported_media_type"),
    ("segment as a form", "POST", "/segment", lambda: b"classes=road",
     {**AUTH, "Content-Type": "application/x-www-form-urlencoded"}, 415, "unsupported_media_type"),
    ("segment as text", "POST", "/segment", lambda: segment_body(_image()), {**AUTH, "Content-Type": "text/plain"},
     415, "unsupported_media_type"),
    ("segment as multipart", "POST", "/segment", lambda: segment_body(_image()),
     {**AUTH, "Content-Type": "multipart/form-data; boundary=x"}, 415, "unsupported_media_type"),
    ("segment without type", "POST", "/segment", lambda: segment_body(_image()), AUTH, 415,
     "unsupported_media_type"),
    ("embed as text", "POST", "/classes/embed", lambda: b'{"classes": ["a"]}', {**AUTH, "Content-Type": "text/plain"},
     415, "unsupported_media_type"),
    ("embed as a bundle", "POST", "/classes/embed", lambda: b'{"classes": ["a"]}', BUNDLE, 415,
     "unsupported_media_type"),
    # -- bodies
    ("garbage", "POST", "/segment", lambda: b"\x00garbage", BUNDLE, 400, "bad_request"),
    ("empty body", "POST", "/segment", lambda: b"", BUNDLE, 400, "bad_request"),
    ("truncated bundle", "POST", "/segment", lambda: segment_body(_image(40, 40))[:3000], BUNDLE, 400,
     "bad_request"),
    ("compressed member", "POST", "/segment",
     lambda: _zip([("params.json", _params()), ("image.npy", _npy(_image()))], zipfile.ZIP_DEFLATED), BUNDLE, 400,
     "bad_request"),
    ("pickled array", "POST", "/segment", lambda: _with_image(_npy(np.array([{"a": 1}], dtype=object))), BUNDLE,
     400, "bad_request"),
    ("unknown member", "POST", "/segment", lambda: _zip([("params.json", _params()), ("x.npy", _npy(_image()))]),
     BUNDLE, 400, "bad_request"),
    ("duplicate member", "POST", "/segment",
     lambda: _zip([("params.json", _params()), ("image.npy", _npy(_image())), ("image.npy", _npy(_image()))]),
     BUNDLE, 400, "bad_request"),
    ("npy header 100000 x 100000 x 3", "POST", "/segment",
     lambda: _with_image(_npy_header((100000, 100000, 3), "u1", b"\0" * 64)), BUNDLE, 400, "bad_request"),
    ("npy header larger than its data", "POST", "/segment",
     lambda: _with_image(_npy_header((10, 10, 3), "u1", b"\0" * 5)), BUNDLE, 400, "bad_request"),
    ("npy header smaller than its data", "POST", "/segment",
     lambda: _with_image(_npy_header((2, 2, 3), "u1", b"\0" * 5000)), BUNDLE, 400, "bad_request"),
    ("npy bad magic", "POST", "/segment", lambda: _with_image(b"NOTNUMPY" + b"\0" * 100), BUNDLE, 400,
     "bad_request"),
    ("npy version 3", "POST", "/segment", lambda: _with_image(b"\x93NUMPY\x03\x00" + b"\x10\0\0\0" + b" " * 16),
     BUNDLE, 400, "bad_request"),
    ("params not JSON", "POST", "/segment", lambda: _with_params(b"{classes: road}"), BUNDLE, 400, "bad_request"),
    ("params not UTF-8", "POST", "/segment", lambda: _with_params(b'{"classes": ["\xff\xfe"]}'), BUNDLE, 400,
     "bad_request"),
    ("params nested 100000 deep", "POST", "/segment", lambda: _with_params(NESTED), BUNDLE, 400, "bad_request"),
    ("no image", "POST", "/segment", lambda: write_bundle({"params.json": {"classes": CLASSES}}), BUNDLE, 400,
     "bad_request"),
    # -- parameters
    ("params a list", "POST", "/segment", lambda: _with_params(b'["road"]'), BUNDLE, 422, "bad_parameter"),
    ("unknown parameter", "POST", "/segment", lambda: _with_params(_params(colour="red")), BUNDLE, 422,
     "bad_parameter"),
    ("future protocol", "POST", "/segment", lambda: _with_params(_params(protocol=99)), BUNDLE, 422,
     "protocol_mismatch"),
    ("no classes", "POST", "/segment", lambda: _with_params(b"{}"), BUNDLE, 422, "bad_classes"),
    ("classes a number", "POST", "/segment", lambda: _with_params(b'{"classes": 7}'), BUNDLE, 422, "bad_classes"),
    ("synonym of 100000 characters", "POST", "/segment", lambda: _with_params(_params(classes=["a", "b" * 100000])),
     BUNDLE, 422, "bad_classes"),
    ("1270 queries", "POST", "/segment",
     lambda: _with_params(_params(classes=[",".join(f"c{k}s{j}" for j in range(5)) for k in range(254)[:260]])),
     BUNDLE, 422, "bad_classes"),
    ("40 synonyms in a class", "POST", "/segment",
     lambda: _with_params(_params(classes=["a", ",".join(f"s{i}" for i in range(40))])), BUNDLE, 422,
     "bad_classes"),
    ("255 classes", "POST", "/segment", lambda: _with_params(_params(classes=[f"c{i}" for i in range(255)])),
     BUNDLE, 422, "bad_classes"),
    ("probabilities 'yes'", "POST", "/segment", lambda: _with_params(_params(return_probabilities="yes")), BUNDLE,
     422, "bad_parameter"),
    ("request_id with a slash", "POST", "/segment", lambda: _with_params(_params(request_id="../x")), BUNDLE, 422,
     "bad_parameter"),
    ("request_id of 1000 characters", "POST", "/segment", lambda: _with_params(_params(request_id="r" * 1000)),
     BUNDLE, 422, "bad_parameter"),
    ("threshold NaN", "POST", "/segment", lambda: _with_params(_params(prob_threshold=float("nan"))), BUNDLE, 422,
     "bad_parameter"),
    ("background out of range", "POST", "/segment", lambda: _with_params(_params(background_index=99)), BUNDLE,
     422, "bad_parameter"),
    ("lambda a string", "POST", "/segment", lambda: _with_params(_params(bias_lambda="x")), BUNDLE, 422,
     "bad_parameter"),
    # -- images
    ("100000 x 1 strip", "POST", "/segment", lambda: segment_body(_image(100000, 1)), BUNDLE, 422, "bad_shape"),
    ("uint16 image", "POST", "/segment", lambda: segment_body(np.zeros((8, 8, 3), np.uint16)), BUNDLE, 422,
     "bad_image"),
    ("big-endian float image", "POST", "/segment", lambda: segment_body(np.zeros((8, 8, 3), ">f4")), BUNDLE, 422,
     "bad_image"),
    ("2-D image", "POST", "/segment", lambda: segment_body(np.zeros((8, 8), np.uint8)), BUNDLE, 422, "bad_image"),
    ("0 x 5 image", "POST", "/segment", lambda: segment_body(np.zeros((0, 5, 3), np.uint8)), BUNDLE, 422,
     "bad_image"),
    ("float mask", "POST", "/segment", lambda: segment_body(_image(), valid=np.ones((8, 8), np.float32)), BUNDLE,
     422, "bad_image"),
    ("mask of another size", "POST", "/segment", lambda: segment_body(_image(), valid=np.ones((4, 8), bool)),
     BUNDLE, 422, "bad_image"),
    # -- routes
    ("GET segment", "GET", "/segment", lambda: None, AUTH, 405, "http_error"),
    ("unknown route", "GET", "/admin", lambda: None, AUTH, 404, "http_error"),
    ("unknown request id", "GET", "/progress/never-sent", lambda: None, AUTH, 404, "unknown_request"),
    ("request id with a NUL", "GET", "/progress/%00abc", lambda: None, AUTH, 404, "unknown_request"),
    # -- class embedding
    ("embed not JSON", "POST", "/classes/embed", lambda: b"{bad", JSON, 400, "bad_request"),
    ("embed nested 100000 deep", "POST", "/classes/embed", lambda: NESTED, JSON, 400, "bad_request"),
    ("embed other fields", "POST", "/classes/embed", lambda: b'{"classes": ["a"], "x": 1}', JSON, 422,
     "bad_parameter"),
    ("embed 255 classes", "POST", "/classes/embed",
     lambda: json.dumps({"classes": [f"c{i}" for i in range(255)]}).encode(), JSON, 422, "bad_classes"),
    ("embed a line of 10000 characters", "POST", "/classes/embed",
     lambda: json.dumps({"classes": ["a", "b," * 5000]}).encode(), JSON, 422, "bad_classes"),
]


# Malformed input the backend once answered with a 500 (issue 20): now a 400 / 413 / 422 naming the member.
# name, path, body factory, headers, expected status, expected code, what the message must name
Malformed = tuple[str, str, Callable[[], bytes], dict[str, str], int, str, str]
MALFORMED: list[Malformed] = [
    ("encrypted member", "/segment", lambda: zip_with_flag(_with_params(_params()), "image.npy", 0x01), BUNDLE, 400,
     "bad_request", "image.npy"),
    ("strongly encrypted member (flag 0x40)", "/segment",
     lambda: zip_with_flag(_with_params(_params()), "params.json", 0x40), BUNDLE, 400, "bad_request", "params.json"),
    ("npy shape (2**63, 0, 3)", "/segment", lambda: _with_image(_npy_header((2**63, 0, 3), "u1", b"")), BUNDLE,
     400, "bad_request", "image.npy"),
    ("npy shape (-1, -1, 3)", "/segment", lambda: _with_image(_npy_header((-1, -1, 3), "u1", b"\0" * 3)), BUNDLE,
     400, "bad_request", "image.npy"),
    ("5000-digit integer in params.json", "/segment",
     lambda: _with_params(b'{"classes": ["a", "b"], "background_index": ' + DIGITS.encode() + b"}"), BUNDLE, 400,
     "bad_request", "params.json"),
    ("5000-digit integer in the embed body", "/classes/embed",
     lambda: b'{"classes": ["a", ' + DIGITS.encode() + b"]}", JSON, 400, "bad_request", "/classes/embed"),
    ("30-digit background index", "/segment",
     lambda: _with_params(_params(background_index=10**29)), BUNDLE, 422, "bad_parameter", "background_index"),
    ("params.json of 2 MB", "/segment", lambda: _with_params(_params(pad="x" * 2_000_000)), BUNDLE, 413,
     "too_large", "params.json"),
    ("embed body of 2 MB", "/classes/embed", lambda: json.dumps({"classes": ["a" * 2_000_000]}).encode(), JSON, 413,
     "too_large", "/classes/embed"),
    ("2000 members", "/segment",
     lambda: _zip([("params.json", _params()), *[(f"extra-{i}.npy", b"") for i in range(2000)]]), BUNDLE, 400,
     "bad_request", "members"),
]


@pytest.mark.parametrize("name, path, make_body, headers, status, code, named", MALFORMED,
                         ids=[c[0] for c in MALFORMED])
def test_malformed_input_is_refused_naming_the_member(server, name, path, make_body, headers, status, code, named):
    got_status, body, _ = call(server.url, path, make_body(), content_type=None, headers=headers)
    assert got_status == status, body[:300]
    got_code, message = error_of(body)
    assert got_code == code and named in message, message
    assert len(message) < 600
    assert health(server.url)["status"] == "ready"


# Input a message once echoed whole (issue 20): a message quotes at most a few dozen characters of it.
ECHOED: list[tuple[str, str, Callable[[], bytes], dict[str, str]]] = [
    ("threshold a 1 MB string", "/segment", lambda: _with_params(_params(prob_threshold="q" * 1_000_000)), BUNDLE),
    ("lambda a long list", "/segment", lambda: _with_params(_params(bias_lambda=["q" * 50] * 5000)), BUNDLE),
    ("background a long string", "/segment", lambda: _with_params(_params(background_index="q" * 100_000)), BUNDLE),
    ("2000 unknown members", "/segment",
     lambda: _zip([("params.json", _params()), *[(f"{'q' * 150}-{i}.npy", b"") for i in range(2000)]]), BUNDLE),
    ("2000 unknown parameters", "/segment",
     lambda: _with_params(_params(**{f"{'q' * 150}{i}": 1 for i in range(2000)})), BUNDLE),
    ("a 5000-character class", "/classes/embed", lambda: json.dumps({"classes": ["q" * 5000]}).encode(), JSON),
    ("a long content type", "/segment", lambda: b"x", {**AUTH, "Content-Type": "text/" + "q" * 5000}),
]


@pytest.mark.parametrize("name, path, make_body, headers", ECHOED, ids=[c[0] for c in ECHOED])
def test_messages_quote_at_most_a_few_dozen_characters(server, name, path, make_body, headers):
    status, body, _ = call(server.url, path, make_body(), content_type=None, headers=headers)
    assert 400 <= status < 500, body[:300]
    message = error_of(body)[1]
    assert len(message) < 600 and "q" * 80 not in message, message[:1000]


@pytest.mark.parametrize("name, method, path, make_body, headers, status, code", CASES, ids=[c[0] for c in CASES])
def test_hostile_request(server, name, method, path, make_body, headers, status, code):
    got_status, body, _ = call(server.url, path, make_body(), content_type=None, method=method, headers=headers)
    assert got_status == status, body[:300]
    got_code, message = error_of(body)
    assert got_code == code, message
    assert len(message) < 600  # never echoes the input at length
    assert health(server.url)["status"] == "ready"


def test_enough_cases():
    assert len(CASES) + len(MALFORMED) + len(ECHOED) >= 55


@pytest.mark.parametrize("head, status, code", [
    ("GET /health HTTP/1.0", 421, "bad_host"),  # no Host at all
    ("POST /segment HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer " + TOKEN + "\r\nContent-Type: "
     + BUNDLE_TYPE + "\r\nContent-Length: 1000000000000", 413, "too_large"),
])
def test_hostile_raw_request(server, head, status, code):
    reply = raw_request(server.url, head)
    assert reply.startswith(f"HTTP/1.1 {status}".encode()), reply[:200]
    assert error_of(reply.split(b"\r\n\r\n", 1)[1])[0] == code
    assert health(server.url)["status"] == "ready"


def test_loopback_names_are_accepted(server):
    port = server.url.rsplit(":", 1)[1]
    for host in (f"localhost:{port}", f"127.0.0.1:{port}", f"[::1]:{port}", "localhost", f"127.5.6.7:{port}"):
        assert call(server.url, "/health", headers={"Host": host})[0] == 200, host
    for origin in (f"http://127.0.0.1:{port}", f"http://localhost:{port}", "http://[::1]:9000"):
        assert call(server.url, "/health", headers={"Origin": origin})[0] == 200, origin


def test_health_without_the_token_names_no_local_paths(server, parity_dir):
    public = health(server.url)
    private = health(server.url, TOKEN)
    assert private["clip_weights"] == str(parity_dir / "tiny-clip.pt")
    assert "tiny-simfeatup.ckpt" in private["upsampler_weights"]
    assert "clip_weights" not in public and "upsampler_weights" not in public
    text = json.dumps(public)
    assert str(parity_dir) not in text and "hostile" not in text and "/cache" not in text  # no local folder
    if public.get("engine") != "ray":  # Ray's replicas keep one cache each: no counters in /health
        assert set(public["feature_cache"]) >= {"used_mb", "window_hits", "window_misses"}  # counters only
    assert public["status"] == "ready" and public["protocol"] == 1 and public["upsampler"] == private["upsampler"]
    assert call(server.url, "/health", headers={"Authorization": "Bearer wrong"})[0] == 200
    assert "clip_weights" not in health(server.url, "wrong")
