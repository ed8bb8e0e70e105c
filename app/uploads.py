"""Reading images out of a request: multipart fields `file` / `files`, or a raw image body."""

from __future__ import annotations

from contextlib import aclosing

from fastapi import Request
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser

from app.errors import InvalidRequest, MissingField, PayloadTooLarge, UnsupportedMediaType
from app.service import Upload

RAW_BODY_TYPES = ("application/octet-stream",)


class InMemoryMultiPartParser(MultiPartParser):
    """Starlette's parser, but file parts stay in memory: each is read into bytes right after parsing anyway,
    and the body limit bounds them, so spooling parts over 1 MB to disk would only write files: none can be
    written on a read-only root filesystem without a tmpfs (there it answered 500)."""

    spool_max_size = 2**63 - 1


async def read_uploads(request: Request, max_images: int) -> tuple[list[Upload], bool]:
    """Return the uploads and whether the client asked for a batch (field `files`)."""
    media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media_type == "multipart/form-data":
        return await _read_multipart(request, max_images)
    if media_type.startswith("image/") or media_type in RAW_BODY_TYPES:
        return [Upload(filename=None, data=await request.body())], False
    raise UnsupportedMediaType(
        f"Content-Type {media_type or '(none)'} is not accepted: send multipart/form-data with the image in "
        "field 'file' (or several in 'files'), or the raw image bytes with Content-Type image/*"
    )


async def _read_multipart(request: Request, max_images: int) -> tuple[list[Upload], bool]:
    try:
        async with aclosing(request.stream()) as stream:
            # One more than allowed so that "too many" is ours to word, not the parser's.
            parser = InMemoryMultiPartParser(request.headers, stream, max_files=max_images + 1, max_fields=32)
            form = await parser.parse()
    except MultiPartException as exc:  # malformed multipart
        raise InvalidRequest(f"malformed multipart body: {exc.message}") from None
    try:
        single, many = form.getlist("file"), form.getlist("files")
        if not single and not many:
            raise MissingField("no image: send it in form field 'file' (or several in 'files')")
        if single and many:
            raise InvalidRequest("send either 'file' or 'files', not both")
        if len(single) > 1:
            raise InvalidRequest("field 'file' takes one image; use 'files' for several")
        parts = single or many
        if len(parts) > max_images:
            raise PayloadTooLarge(f"{len(parts)} images in one request; the limit is {max_images}")
        uploads = []
        for part in parts:
            if not isinstance(part, UploadFile):
                raise InvalidRequest("the image field must be a file upload, not a text value")
            uploads.append(Upload(filename=part.filename, data=await part.read()))
        return uploads, bool(many)
    finally:
        await form.close()
