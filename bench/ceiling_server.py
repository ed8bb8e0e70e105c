"""The ceiling: a FastAPI endpoint that parses the same multipart upload and returns a constant.

No image decoding and no model, so its requests/s is what HTTP, multipart parsing and FastAPI cost
on their own: no classifier behind FastAPI can beat it. The benchmark runs it twice, with asyncio + h11
and with uvloop + httptools.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import FastAPI, File, UploadFile

app = FastAPI()
ANSWER = {"class_index": 0, "class_name": "T-shirt/top"}


@app.post("/predict")
async def predict(file: Annotated[UploadFile, File()]) -> dict[str, object]:
    await file.read()
    return ANSWER
