"""The one reader of /predict's images out of a request: multipart fields ``file`` / ``files``, or a raw image body.

The body is already whole in memory and bounded by the upload limit, so the multipart reader is a plain scan
over bytes (RFC 7578): no streaming callbacks, and no spooled temporary files, which a read-only root could not
hold anyway. Header parameters (``name="file"; filename="a.png"``, RFC 7578's quoted strings) by one regular
expression: python-multipart's general parser cost more than the rest of reading a small upload.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from app.errors import InvalidRequest, MissingField, PayloadTooLarge, UnsupportedMediaType

RAW_BODY_TYPES = ("application/octet-stream",)
MAX_TEXT_FIELDS = 32
MAX_PART_HEADER_BYTES = 16 * 1024
CRLF = b"\r\n"
PARAMETER = re.compile(rb';\s*([^\s=;]+)\s*=\s*("(?:[^"\\]|\\.)*"|[^;]*)')
QUOTED_PAIR = re.compile(rb"\\(.)")


@dataclass(frozen=True)
class Upload:
    filename: str | None
    data: bytes


@dataclass(frozen=True)
class Part:
    name: str
    filename: str | None  # None: a text field, not a file
    data: bytes


def read_uploads(content_type: bytes, body: bytes, max_images: int) -> tuple[list[Upload], bool]:
    """The uploads, and whether the client asked for a batch (field ``files``). ``content_type``: the raw header."""
    media_type = content_type.split(b";")[0].strip().lower().decode("latin-1")
    if media_type == "multipart/form-data":
        return _uploads_from_parts(read_parts(content_type, body, max_files=max_images + 1), max_images)
    if media_type.startswith("image/") or media_type in RAW_BODY_TYPES:
        return [Upload(filename=None, data=body)], False
    raise UnsupportedMediaType(
        f"Content-Type {media_type or '(none)'} is not accepted: send multipart/form-data with the image in "
        "field 'file' (or several in 'files'), or the raw image bytes with Content-Type image/*"
    )


def _uploads_from_parts(parts: list[Part], max_images: int) -> tuple[list[Upload], bool]:
    single = [part for part in parts if part.name == "file"]
    many = [part for part in parts if part.name == "files"]
    if not single and not many:
        raise MissingField("no image: send it in form field 'file' (or several in 'files')")
    if single and many:
        raise InvalidRequest("send either 'file' or 'files', not both")
    if len(single) > 1:
        raise InvalidRequest("field 'file' takes one image; use 'files' for several")
    chosen = single or many
    if len(chosen) > max_images:
        raise PayloadTooLarge(f"{len(chosen)} images in one request; the limit is {max_images}")
    if any(part.filename is None for part in chosen):
        raise InvalidRequest("the image field must be a file upload, not a text value")
    return [Upload(filename=part.filename, data=part.data) for part in chosen], bool(many)


def read_parts(content_type: bytes, body: bytes, max_files: int) -> list[Part]:
    """Every part of a multipart/form-data body; InvalidRequest, in words, for anything malformed."""
    _, options = parse_options_header(content_type)
    boundary = options.get(b"boundary")
    if not boundary:
        raise _malformed("Missing boundary in multipart.")
    delimiter = CRLF + b"--" + boundary
    position = _first_part(body, delimiter)
    parts: list[Part] = []
    files = fields = 0
    while not body.startswith(b"--", position):  # "--" after a delimiter closes the body; the rest is epilogue
        part, position = _read_part(body, position, delimiter)
        files, fields = files + (part.filename is not None), fields + (part.filename is None)
        if files > max_files:
            raise _malformed(f"Too many files. Maximum number of files is {max_files}.")
        if fields > MAX_TEXT_FIELDS:
            raise _malformed(f"Too many fields. Maximum number of fields is {MAX_TEXT_FIELDS}.")
        parts.append(part)
    return parts


def _first_part(body: bytes, delimiter: bytes) -> int:
    """Where the first part's delimiter line ends; a preamble before it is allowed, as RFC 2046 says."""
    if body.startswith(delimiter[2:]):
        return len(delimiter) - 2
    found = body.find(delimiter)
    if found < 0:
        raise _malformed("the body holds no part that starts with the boundary")
    return found + len(delimiter)


def _read_part(body: bytes, position: int, delimiter: bytes) -> tuple[Part, int]:
    """The part whose delimiter line ends at ``position``, and where the next delimiter line ends."""
    line_end = body.find(CRLF, position)
    if line_end < 0 or body[position:line_end].strip(b" \t"):
        raise _malformed("a boundary line is followed by something other than a line end")
    head_start = line_end + 2
    if body.startswith(CRLF, head_start):
        head_end, data_start = head_start, head_start + 2
    else:
        head_end = body.find(CRLF + CRLF, head_start, head_start + MAX_PART_HEADER_BYTES)
        if head_end < 0:
            raise _malformed(f"a part's headers do not end within {MAX_PART_HEADER_BYTES} bytes")
        data_start = head_end + 4
    data_end = body.find(delimiter, data_start)
    if data_end < 0:
        raise _malformed("the body ends inside a part, without its closing boundary")
    name, filename = _disposition(body[head_start:head_end])
    return Part(name, filename, body[data_start:data_end]), data_end + len(delimiter)


def _disposition(head: bytes) -> tuple[str, str | None]:
    """The field name and filename from a part's Content-Disposition header."""
    for line in head.split(CRLF) if head else ():
        header, colon, value = line.partition(b":")
        if not colon:
            raise _malformed("a part header line has no colon")
        if header.strip().lower() == b"content-disposition":
            kind, options = parse_options_header(value.strip())
            if kind != b"form-data" or b"name" not in options:
                raise _malformed("a part's Content-Disposition is not form-data with a name")
            filename = options.get(b"filename")
            return _decode(options[b"name"]), None if filename is None else _decode(filename)
    raise _malformed("a part has no Content-Disposition header")


def _decode(value: bytes) -> str:
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        return value.decode("latin-1")


def _malformed(reason: str) -> InvalidRequest:
    return InvalidRequest(f"malformed multipart body: {reason}")


def parse_options_header(value: bytes) -> tuple[bytes, dict[bytes, bytes]]:
    """``kind; name=value; name="quoted \\"value\\""`` -> (lower-case kind, {lower-case name: value})."""
    kind, _, rest = value.partition(b";")
    options = {}
    for name, raw in PARAMETER.findall(b";" + rest):
        raw = raw.strip()
        if len(raw) >= 2 and raw[:1] == raw[-1:] == b'"':
            raw = QUOTED_PAIR.sub(rb"\1", raw[1:-1]) if b"\\" in raw else raw[1:-1]
        options[name.lower()] = raw
    return kind.strip().lower(), options
