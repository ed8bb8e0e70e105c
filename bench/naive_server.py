"""The baseline: a quickstart-style FastAPI server, as one would write it from the PyTorch and FastAPI tutorials.

Per request: PIL opens the upload, converts to grayscale and resizes to 28x28, torchvision's ToTensor, the model,
softmax, a dict back. No batching, no thread pool, no limits. Run it as the benchmark does:

    FASHION_MODEL_PATH=artifacts/model.safetensors uvicorn bench.naive_server:app --workers 1
"""

from __future__ import annotations

import io
import os
from typing import Annotated

import torch
from fastapi import FastAPI, File, UploadFile
from PIL import Image
from safetensors.torch import load_file
from torchvision import transforms

from models import CLASS_NAMES, NeuralNetwork

model = NeuralNetwork()
tensors = load_file(os.environ.get("FASHION_MODEL_PATH", "artifacts/model.safetensors"))
model.load_state_dict({name: t for name, t in tensors.items() if not name.startswith("extra.")})  # the weights only
model.eval()
to_tensor = transforms.ToTensor()
app = FastAPI()


@app.post("/predict")
async def predict(file: Annotated[UploadFile, File()]) -> dict[str, object]:
    image = Image.open(io.BytesIO(await file.read())).convert("L").resize((28, 28))
    with torch.no_grad():
        probabilities = torch.softmax(model(to_tensor(image).unsqueeze(0)), dim=1)[0]
    best = int(probabilities.argmax())
    return {
        "class_index": best,
        "class_name": CLASS_NAMES[best],
        "probabilities": dict(zip(CLASS_NAMES, probabilities.tolist(), strict=True)),
    }
