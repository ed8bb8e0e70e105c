"""Fuzzing /predict: arbitrary and mutated bytes, odd content types and multipart shapes, and the OpenAPI schema.

Every answer must be a documented status with the JSON error body, never a 5xx or a hang, and a valid
request right after must still succeed. Bounded: about a minute in all on a loaded 2-core machine.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from app.config import Settings
from app.main import create_app
from tests.conftest import garment, image_bytes

pytestmark = pytest.mark.timeout(180)  # a hang fails the test instead of stalling the run

FUZZ = settings(
    max_examples=150,
    deadline=None,  # timing belongs in bench/; a hang is caught by the timeout above
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
ANSWERED = {200, 400, 413, 415, 422}  # what /predict may say to a client that sent garbage
MAX_IMAGES = 8


def _corpus() -> list[bytes]:
    image = garment((40, 32))
    return [
        image_bytes(image, "PNG"),
        image_bytes(image.convert("RGBA"), "PNG"),
        image_bytes(image.convert("P"), "PNG"),
        image_bytes(image, "JPEG", quality=80),
        image_bytes(image.convert("RGB"), "JPEG", progressive=True),
        image_bytes(image, "GIF", save_all=True, append_images=[Image.new("L", (40, 32))]),
        image_bytes(image, "BMP"),
        image_bytes(image, "WEBP"),
        image_bytes(image, "TIFF", compression="tiff_lzw"),
    ]


CORPUS = _corpus()
VALID_PNG = CORPUS[0]
MAGICS = [b"", b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff\xe0", b"GIF89a", b"GIF87a", b"BM", b"II*\x00", b"MM\x00*", b"RIFF"]
INTERESTING_U32 = [0, 1, 0x7F, 0xFF, 0x7FFF, 0xFFFF, 0x10000, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF, 50_000]


@pytest.fixture(scope="module")
def fuzz_client(artifact_path: Path) -> Iterator[TestClient]:
    settings_ = Settings(
        model_path=artifact_path, device="cpu", max_upload_bytes=256 * 1024, max_images_per_request=MAX_IMAGES
    )
    with TestClient(create_app(settings_), raise_server_exceptions=False) as client:
        yield client


def assert_clean_answer(response: httpx.Response) -> None:
    """A documented status; errors in the one JSON shape with the request id the header carries."""
    assert response.status_code in ANSWERED, (response.status_code, response.text[:500])
    if response.status_code == 200:
        body = response.json()
        predictions = body.get("predictions", [body])
        assert all(abs(sum(p["probabilities"].values()) - 1) < 1e-4 for p in predictions)
        return
    error = response.json()["error"]
    assert set(error) == {"code", "message", "request_id"}, error
    assert error["message"] and error["request_id"] == response.headers["x-request-id"]


def assert_still_serving(client: TestClient) -> None:
    response = client.post("/predict", files={"file": ("ok.png", VALID_PNG, "image/png")})
    assert response.status_code == 200, response.text


def _png_chunks(data: bytes) -> list[tuple[int, int]]:
    """(offset, data length) of each chunk of a well-formed PNG."""
    chunks, offset = [], 8
    while offset + 12 <= len(data):
        (length,) = struct.unpack(">I", data[offset : offset + 4])
        if offset + 12 + length > len(data):  # a length an earlier mutation broke
            break
        chunks.append((offset, length))
        offset += 12 + length
    return chunks


@st.composite
def mutated_images(draw: st.DrawFn) -> bytes:
    """A valid image with a few mutations: truncations, bit flips (biased to headers), wrong lengths."""
    data = bytearray(draw(st.sampled_from(CORPUS)))
    for _ in range(draw(st.integers(1, 4))):
        if not data:
            break
        position = draw(st.one_of(st.integers(0, min(len(data), 64) - 1), st.integers(0, len(data) - 1)))
        operation = draw(st.sampled_from(["truncate", "flip", "u32", "u16", "insert", "delete", "png-chunk"]))
        if operation == "truncate":
            del data[position:]
        elif operation == "flip":
            data[position] ^= 1 << draw(st.integers(0, 7))
        elif operation in ("u32", "u16"):
            fmt = draw(st.sampled_from([">I", "<I"] if operation == "u32" else [">H", "<H"]))
            value = draw(st.sampled_from(INTERESTING_U32)) & (0xFFFFFFFF if operation == "u32" else 0xFFFF)
            data[position : position + struct.calcsize(fmt)] = struct.pack(fmt, value)
        elif operation == "insert":
            data[position:position] = draw(st.binary(min_size=1, max_size=64))
        elif operation == "delete":
            del data[position : position + draw(st.integers(1, 64))]
        elif data.startswith(b"\x89PNG") and (chunks := _png_chunks(bytes(data))):
            _mutate_png_chunk(draw, data, draw(st.sampled_from(chunks)))
    return bytes(data)


def _mutate_png_chunk(draw: st.DrawFn, data: bytearray, chunk: tuple[int, int]) -> None:
    """Wrong chunk lengths, or a changed field with the CRC fixed so the decoder reads on."""
    offset, length = chunk
    field = draw(st.sampled_from(["length", "data", "type"]))
    if field == "length":
        data[offset : offset + 4] = struct.pack(">I", draw(st.sampled_from(INTERESTING_U32)))
        return
    if field == "type":
        data[offset + 4 : offset + 8] = draw(st.sampled_from([b"IHDR", b"IDAT", b"IEND", b"PLTE", b"tRNS", b"zzzz"]))
    elif length:
        index = offset + 8 + draw(st.integers(0, length - 1))
        data[index] = draw(st.integers(0, 255))
    crc = zlib.crc32(bytes(data[offset + 4 : offset + 8 + length]))
    data[offset + 8 + length : offset + 12 + length] = struct.pack(">I", crc)


CONTENT_TYPES = st.one_of(
    st.sampled_from(
        [
            None,
            "",
            "image/png",
            "IMAGE/PNG",
            "image/png; charset=utf-8",
            "image/jpeg",
            "image/x-anything",
            "image/",
            "application/octet-stream",
            "text/plain",
            "application/json",
            "application/x-www-form-urlencoded",
            "multipart/form-data",
            "multipart/form-data; boundary=",
            "multipart/form-data; boundary=abc",
            'multipart/form-data; boundary="quoted; boundary"',
            "multipart/mixed; boundary=abc",
            ";;;",
        ]
    ),
    st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=80),
)


@pytest.mark.slow
@FUZZ
@given(
    body=st.one_of(
        st.binary(max_size=2048), st.builds(bytes.__add__, st.sampled_from(MAGICS), st.binary(max_size=512))
    ),
    content_type=CONTENT_TYPES,
)
def test_fuzz_arbitrary_bytes_with_any_content_type(
    fuzz_client: TestClient, body: bytes, content_type: str | None
) -> None:
    headers = {} if content_type is None else {"Content-Type": content_type}
    assert_clean_answer(fuzz_client.post("/predict", content=body, headers=headers))
    assert_still_serving(fuzz_client)


@pytest.mark.slow
@FUZZ
@given(data=mutated_images(), as_multipart=st.booleans(), params=st.sampled_from([{}, {"return_input": "true"}]))
def test_fuzz_mutated_valid_images(fuzz_client: TestClient, data: bytes, as_multipart: bool, params: dict) -> None:  # type: ignore[type-arg]
    if as_multipart:
        response = fuzz_client.post("/predict", files={"file": ("m.img", data, "image/png")}, params=params)
    else:
        response = fuzz_client.post("/predict", content=data, headers={"Content-Type": "image/png"}, params=params)
    assert_clean_answer(response)
    assert_still_serving(fuzz_client)


def _short(data: bytes) -> str:
    return f"<{len(data)} bytes {data[:12]!r}...>" if len(data) > 16 else repr(data)


@dataclass(repr=False)
class Part:
    name: str | None  # None: a Content-Disposition without a name; NO_DISPOSITION: none at all
    filename: str | None
    content_type: str | None
    data: bytes

    def encode(self, newline: bytes) -> bytes:
        disposition = "form-data" if self.name is None else f'form-data; name="{self.name}"'
        if self.filename is not None:
            disposition += f'; filename="{self.filename}"'
        headers = [f"Content-Disposition: {disposition}"] if self.name != NO_DISPOSITION else []
        if self.content_type is not None:
            headers.append(f"Content-Type: {self.content_type}")
        return newline.join(h.encode("utf-8") for h in headers) + newline + newline + self.data

    def __repr__(self) -> str:  # short, so a failing example stays readable (and hypothesis does not warn)
        name = self.name if self.name is None or len(self.name) < 40 else f"{self.name[:5]}...({len(self.name)})"
        filename = self.filename if self.filename is None or len(self.filename) < 40 else f"({len(self.filename)})"
        return f"Part({name!r}, {filename!r}, {self.content_type!r}, {_short(self.data)})"


@dataclass(repr=False)
class Multipart:
    """One odd multipart request: its parts and how the envelope around them is (mis)built."""

    parts: list[Part]
    boundary: str
    header_boundary: str | None  # SAME: the body's; None: no boundary parameter at all
    quote: bool
    newline: bytes
    preamble: bytes
    closed: bool
    epilogue: bytes

    @property
    def content_type(self) -> str:
        if self.header_boundary is None:
            return "multipart/form-data"
        value = self.boundary if self.header_boundary == SAME else self.header_boundary
        if self.quote or " " in value:
            value = f'"{value}"'
        return f"multipart/form-data; boundary={value}"

    def body(self) -> bytes:
        delimiter = b"--" + self.boundary.encode()
        body = self.preamble
        for part in self.parts:
            body += delimiter + self.newline + part.encode(self.newline) + self.newline
        if self.closed:
            body += delimiter + b"--" + self.newline
        return body + self.epilogue

    def __repr__(self) -> str:
        return (
            f"Multipart({self.parts!r}, boundary={self.boundary[:20]!r}, header={self.content_type[:60]!r}, "
            f"newline={self.newline!r}, preamble={self.preamble!r}, closed={self.closed}, epilogue={self.epilogue!r})"
        )


NO_DISPOSITION = "<no-disposition>"
SAME = "<same as the body's>"
FIELD_NAMES = st.one_of(
    st.sampled_from(["file", "files"]),  # weighted: most requests should get as far as decoding
    st.sampled_from(["file", "files", "other", "", "FILE", "file[]", NO_DISPOSITION, None]),
    st.integers(1_000, 200_000).map(lambda n: "f" * n),  # huge field names
    st.text(st.characters(min_codepoint=32, max_codepoint=0x2FF, exclude_characters='"\r\n'), max_size=20),
)
FILENAMES = st.one_of(
    st.none(),
    st.sampled_from(["", "g.png", "../../etc/passwd", "x" * 5000, "ünïcødé.png", "a;b=c.png"]),
)
PART_DATA = st.one_of(st.sampled_from([*CORPUS, b""]), mutated_images(), st.binary(max_size=256))
BOUNDARIES = st.sampled_from(["fuzzboundary", "a", "-" * 70, "x" * 200, "with space"])

multipart_bodies = st.builds(
    Multipart,
    parts=st.lists(
        st.builds(
            Part,
            name=FIELD_NAMES,
            filename=FILENAMES,
            content_type=st.sampled_from([None, "image/png", "text/plain", "multipart/mixed; boundary=inner"]),
            data=PART_DATA,
        ),
        max_size=MAX_IMAGES + 2,
    ),
    boundary=BOUNDARIES,
    header_boundary=st.sampled_from([SAME, SAME, SAME, SAME, None, "", "other"]),
    quote=st.booleans(),
    newline=st.sampled_from([b"\r\n", b"\r\n", b"\r\n", b"\n"]),
    preamble=st.sampled_from([b"", b"", b"", b"preamble\r\n"]),
    closed=st.sampled_from([True, True, True, False]),  # the closing delimiter, sometimes missing
    epilogue=st.sampled_from([b"", b"epilogue"]),
)


@pytest.mark.slow
@FUZZ
@given(multipart=multipart_bodies)
def test_fuzz_odd_multipart_shapes(fuzz_client: TestClient, multipart: Multipart) -> None:
    response = fuzz_client.post("/predict", content=multipart.body(), headers={"Content-Type": multipart.content_type})
    assert_clean_answer(response)
    assert_still_serving(fuzz_client)


def test_duplicate_and_mixed_fields_are_worded_4xx(fuzz_client: TestClient) -> None:
    """The shapes the fuzzer finds most, pinned: each answer names what is wrong."""
    png = ("g.png", VALID_PNG, "image/png")
    cases = [
        ([("file", png), ("file", png)], 400, "field 'file' takes one image"),
        ([("file", png), ("files", png)], 400, "not both"),
        ([("files", png)] * (MAX_IMAGES + 1), 413, f"the limit is {MAX_IMAGES}"),
        ([("files", png)] * (MAX_IMAGES + 5), 400, "malformed multipart body"),
        ([("other", png)], 422, "no image"),
    ]
    for files, status, fragment in cases:
        response = fuzz_client.post("/predict", files=files)
        assert response.status_code == status, (files[0][0], response.text)
        assert fragment in response.json()["error"]["message"]
    text_field = fuzz_client.post("/predict", data={"file": "not a file"}, files={"x": png})
    assert text_field.status_code == 400
    assert "file upload, not a text value" in text_field.json()["error"]["message"]


# --- schemathesis: the app's own OpenAPI schema, positive and negative cases, against the running app ---
# The schema is read from the app object (no request, so no lifespan at import); the model path is set by a
# fixture before schemathesis' first call starts the lifespan. (Its lazy `from_fixture` loader needs a pytest
# private attribute that pytest 9 no longer has.)

SCHEMA_APP = create_app(Settings(model_path=Path("set-by-the-schema_model-fixture"), device="cpu"))
SCHEMA = schemathesis.openapi.from_dict(SCHEMA_APP.openapi())
SCHEMA.app = SCHEMA_APP
SCHEMA.config.generation.update(max_examples=30)


@pytest.fixture(scope="module")
def schema_model(artifact_path: Path) -> Iterator[None]:
    SCHEMA_APP.state.settings = SCHEMA_APP.state.settings.model_copy(update={"model_path": artifact_path})
    yield
    from schemathesis.python import asgi

    asgi.shutdown_lifespans()  # schemathesis started the lifespan on its first call; stop the batcher


@pytest.mark.slow
@SCHEMA.parametrize()
@settings(deadline=None, suppress_health_check=list(HealthCheck))
def test_openapi_schema_is_honoured(schema_model: None, case: schemathesis.Case) -> None:
    """No 5xx; status, content type, headers and body as the schema documents them."""
    response = case.call()
    assert response.status_code < 500, (response.status_code, response.text[:500])
    checks = [status_code_conformance, content_type_conformance, response_headers_conformance]
    case.validate_response(response, checks=[*checks, response_schema_conformance])
