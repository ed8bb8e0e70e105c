"""Dynamic batching, through real HTTP handlers with real image bytes, and the batcher on its own.

A gate in front of the model holds the first forward pass, so the tests decide what is queued when
the model frees up, instead of hoping that threads line up.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor

import httpx
import pytest
import torch
from fastapi.testclient import TestClient
from torch import nn

from app.batching import Batcher
from app.config import Settings
from app.errors import ModelFailed, Overloaded
from app.predictor import IMAGE_BYTES, PixelBatch
from tests.conftest import garment, image_bytes, metric_sample, wait_for

PNG = image_bytes(garment(), "PNG")
BIG_PNG = image_bytes(garment((200, 200)), "PNG")
TRUNCATED = BIG_PNG[: len(BIG_PNG) // 2]  # a header Pillow accepts, then no pixels


def blank(count: int) -> PixelBatch:
    return PixelBatch(bytes(IMAGE_BYTES * count), count)


class GatedModel(nn.Module):
    """Counts forward passes and their sizes; the first one waits until the test opens the gate."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner
        self.batch_sizes: list[int] = []
        self.entered = threading.Event()
        self.gate = threading.Event()

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        self.batch_sizes.append(len(inputs))
        self.entered.set()
        assert self.gate.wait(60), "the test never opened the gate"
        output: torch.Tensor = self.inner(inputs)
        return output


@pytest.fixture
def gated(client: TestClient) -> Iterator[GatedModel]:
    predictor = client.app.state.service.predictor  # type: ignore[attr-defined]
    model = GatedModel(predictor.model)
    predictor.model = model
    yield model
    model.gate.set()  # never leave a request hanging past the test


def predict(client: TestClient, data: bytes = PNG, name: str = "g.png", **params: str) -> httpx.Response:
    return client.post("/predict", files={"file": (name, data, "image/png")}, params=params)


def queue_behind_first_batch(
    client: TestClient, gated: GatedModel, pool: ThreadPoolExecutor, bodies: list[bytes]
) -> tuple[Future[httpx.Response], list[Future[httpx.Response]]]:
    """One request holds the model; then ``bodies`` are sent and left waiting in the queue."""
    first = pool.submit(predict, client)
    assert gated.entered.wait(30)
    queued = [pool.submit(predict, client, body, f"{i}.png") for i, body in enumerate(bodies)]
    return first, queued


def test_concurrent_requests_share_one_forward_pass(client: TestClient, gated: GatedModel) -> None:
    batcher = client.app.state.service.batcher  # type: ignore[attr-defined]
    with ThreadPoolExecutor(max_workers=8) as pool:
        first, queued = queue_behind_first_batch(client, gated, pool, [PNG] * 6)
        wait_for(lambda: batcher.queued_images == 6, "six queued images")
        gated.gate.set()
        responses = [first.result(30), *(future.result(30) for future in queued)]
    assert [r.status_code for r in responses] == [200] * 7
    assert gated.batch_sizes == [1, 6]
    assert {r.json()["inference_ms"] for r in responses[1:]} == {responses[1].json()["inference_ms"]}
    assert metric_sample(client, "fashion_batch_size_count") == 2
    assert metric_sample(client, "fashion_batch_size_sum") == 7
    assert metric_sample(client, "fashion_queue_wait_seconds_count") == 7
    assert metric_sample(client, "fashion_queue_wait_seconds_sum") > 0


def test_bad_image_in_a_concurrent_batch_fails_only_itself(client: TestClient, gated: GatedModel) -> None:
    bodies = [PNG, PNG, b"not an image at all", PNG, TRUNCATED, PNG]
    with ThreadPoolExecutor(max_workers=8) as pool:
        first, queued = queue_behind_first_batch(client, gated, pool, bodies)
        bad_text, bad_png = queued[2].result(30), queued[4].result(30)  # refused before the queue
        batcher = client.app.state.service.batcher  # type: ignore[attr-defined]
        wait_for(lambda: batcher.queued_images == 4, "the four good images queued")
        gated.gate.set()
        good = [first.result(30), *(queued[i].result(30) for i in (0, 1, 3, 5))]
    assert (bad_text.status_code, bad_text.json()["error"]["code"]) == (415, "unsupported_media_type")
    assert (bad_png.status_code, bad_png.json()["error"]["code"]) == (400, "invalid_image")
    assert [r.status_code for r in good] == [200] * 5
    assert [r.json()["filename"] for r in good[1:]] == ["0.png", "1.png", "3.png", "5.png"]
    assert gated.batch_sizes == [1, 4]


def test_full_queue_answers_503_with_retry_after(make_client: Callable[..., TestClient], settings: Settings) -> None:
    client = make_client(settings.model_copy(update={"max_queue": 2}))
    predictor = client.app.state.service.predictor  # type: ignore[attr-defined]
    gated = GatedModel(predictor.model)
    predictor.model = gated
    try:
        with ThreadPoolExecutor(max_workers=4) as pool:
            first, queued = queue_behind_first_batch(client, gated, pool, [PNG, PNG])
            wait_for(lambda: client.app.state.service.batcher.queued_images == 2, "a full queue")  # type: ignore[attr-defined]
            refused = predict(client)
            gated.gate.set()
            accepted = [first.result(30), *(future.result(30) for future in queued)]
    finally:
        gated.gate.set()
    assert refused.status_code == 503
    assert refused.headers["retry-after"] == "1"
    assert refused.json()["error"]["code"] == "overloaded"
    assert refused.headers["x-request-id"] == refused.json()["error"]["request_id"]
    assert [r.status_code for r in accepted] == [200] * 3
    assert predict(client).status_code == 200  # the queue drained: served again


def test_batching_off_serves_each_request_on_its_own(
    make_client: Callable[..., TestClient], settings: Settings
) -> None:
    client = make_client(settings.model_copy(update={"batching": False}))
    assert client.app.state.service.batcher is None  # type: ignore[attr-defined]
    with ThreadPoolExecutor(max_workers=4) as pool:
        responses = list(pool.map(lambda i: predict(client, name=f"{i}.png"), range(8)))
    assert [r.status_code for r in responses] == [200] * 8
    assert sorted(r.json()["filename"] for r in responses) == sorted(f"{i}.png" for i in range(8))
    # Eight forward passes of one image each: nothing was batched together.
    batches = metric_sample(client, "fashion_batch_size_count"), metric_sample(client, "fashion_batch_size_sum")
    assert batches == (8, 8)
    many = client.post("/predict", files=[("files", (f"{i}.png", PNG, "image/png")) for i in range(3)])
    assert [p["filename"] for p in many.json()["predictions"]] == ["0.png", "1.png", "2.png"]


@pytest.mark.parametrize(
    ("data", "status", "code"),
    [
        (b"", 400, "invalid_image"),
        (TRUNCATED, 400, "invalid_image"),
        (b"%PDF-1.4", 415, "unsupported_media_type"),
    ],
)
def test_errors_carry_the_request_id(client: TestClient, data: bytes, status: int, code: str) -> None:
    for params in ({}, {"top_k": "3"}):
        response = predict(client, data, **params)
        assert (response.status_code, response.json()["error"]["code"]) == (status, code), params
        assert response.json()["error"]["request_id"] == response.headers["x-request-id"]


def test_predict_checks_the_api_key(make_client: Callable[..., TestClient], settings: Settings) -> None:
    client = make_client(Settings(model_path=settings.model_path, device="cpu", api_key="s3cret"))
    assert predict(client).status_code == 401
    response = client.post(
        "/predict", files={"file": ("g.png", PNG, "image/png")}, headers={"Authorization": "Bearer s3cret"}
    )
    assert response.status_code == 200


def test_batcher_never_exceeds_max_batch_size_and_never_splits_a_request() -> None:
    sizes: list[int] = []

    def model(pixels: PixelBatch) -> torch.Tensor:
        sizes.append(len(pixels))
        time.sleep(0.01)  # let the queue fill behind each batch
        return torch.full((len(pixels), 10), 0.1)

    async def run() -> list[int]:
        batcher = Batcher(model, max_batch_size=8, max_wait_s=0, max_queue=100)
        batcher.start()
        try:
            lone = asyncio.ensure_future(batcher.submit(blank(1)))
            await asyncio.sleep(0.005)  # the batcher took it at once, alone
            rest = [batcher.submit(blank(k)) for k in (3, 3, 3, 5, 2, 8, 1)]
            results = await asyncio.gather(lone, *rest)
        finally:
            await batcher.stop()
        return [len(probabilities) for probabilities, _seconds in results]

    assert asyncio.run(run()) == [1, 3, 3, 3, 5, 2, 8, 1]  # each request gets its own rows back
    assert sum(sizes) == 26 and max(sizes) <= 8
    assert sizes[0] == 1  # a lone first request waited for nobody


def test_batcher_refuses_beyond_max_queue_without_queueing() -> None:
    async def run() -> None:
        batcher = Batcher(lambda p: torch.zeros(len(p), 10), max_batch_size=4, max_wait_s=0, max_queue=3)
        with pytest.raises(Overloaded) as refused:
            await batcher.submit(blank(4))
        assert refused.value.retry_after_s == 1
        assert batcher.queued_images == 0
        await batcher.stop()

    asyncio.run(run())


def test_batcher_waits_up_to_max_wait_for_a_batch_to_fill() -> None:
    sizes: list[int] = []

    def model(pixels: PixelBatch) -> torch.Tensor:
        sizes.append(len(pixels))
        return torch.zeros(len(pixels), 10)

    async def run() -> None:
        batcher = Batcher(model, max_batch_size=4, max_wait_s=0.5, max_queue=100)
        batcher.start()
        try:
            first = asyncio.ensure_future(batcher.submit(blank(1)))
            await asyncio.sleep(0.05)  # the batcher is waiting for company, not computing
            assert sizes == []
            rest = [batcher.submit(blank(1)) for _ in range(3)]
            await asyncio.gather(first, *rest)
        finally:
            await batcher.stop()

    asyncio.run(run())
    assert sizes == [4]  # full before the deadline: one pass, without waiting it out


def test_concurrent_requests_with_different_images_each_get_their_own_row(
    client: TestClient, gated: GatedModel
) -> None:
    """Six different garments queued into one forward pass: each answer is the one that image gets alone."""
    bodies = [image_bytes(garment((28, 28 - 3 * i), light_background=i % 2 == 1), "PNG") for i in range(6)]
    batcher = client.app.state.service.batcher  # type: ignore[attr-defined]
    with ThreadPoolExecutor(max_workers=8) as pool:
        first, queued = queue_behind_first_batch(client, gated, pool, bodies)
        wait_for(lambda: batcher.queued_images == 6, "six queued images")
        gated.gate.set()
        together = [future.result(30).json() for future in queued]
        first.result(30)
    assert gated.batch_sizes[:2] == [1, 6]
    alone = [predict(client, body, f"{i}.png").json() for i, body in enumerate(bodies)]
    assert len({str(answer["probabilities"]) for answer in alone}) == 6  # six different answers to tell apart
    for shared, single in zip(together, alone, strict=True):
        assert shared["filename"] == single["filename"]
        assert shared["probabilities"] == pytest.approx(single["probabilities"], abs=1e-6)


def test_a_job_cancelled_while_queued_leaves_its_batch() -> None:
    sizes: list[int] = []
    release = threading.Event()

    def model(pixels: PixelBatch) -> torch.Tensor:
        sizes.append(len(pixels))
        release.wait(10)
        return torch.zeros(len(pixels), 10)

    async def run() -> None:
        batcher = Batcher(model, max_batch_size=64, max_wait_s=0, max_queue=100)
        batcher.start()
        try:
            holding = asyncio.ensure_future(batcher.submit(blank(1)))
            await asyncio.sleep(0.05)  # the model holds the first job
            leaving = asyncio.ensure_future(batcher.submit(blank(5)))
            staying = asyncio.ensure_future(batcher.submit(blank(2)))
            await asyncio.sleep(0.01)
            leaving.cancel()  # its client went away while it waited
            release.set()
            await holding
            output, _seconds = await staying
            assert len(output) == 2
            assert leaving.cancelled()
        finally:
            await batcher.stop()

    asyncio.run(run())
    assert sizes == [1, 2]  # the cancelled job's five images never reached the model


def test_a_dead_batcher_worker_fails_what_was_queued_and_is_restarted() -> None:
    async def run() -> None:
        batcher = Batcher(lambda p: torch.zeros(len(p), 10), max_batch_size=8, max_wait_s=0, max_queue=100)
        real_next_batch = batcher._next_batch
        calls = 0

        async def broken_once() -> list:  # type: ignore[type-arg]
            nonlocal calls
            calls += 1
            if calls == 1:
                await asyncio.sleep(0.02)  # let a job queue first
                raise RuntimeError("a bug in the batching loop")
            return await real_next_batch()

        batcher._next_batch = broken_once  # type: ignore[method-assign]
        batcher.start()
        try:
            with pytest.raises(ModelFailed):
                await batcher.submit(blank(1))
            await asyncio.sleep(0)  # the done-callback has run: a new worker is up
            output, _seconds = await asyncio.wait_for(batcher.submit(blank(3)), 5)
            assert len(output) == 3
            assert batcher.restarts == 1
            assert batcher.queued_images == 0
        finally:
            await batcher.stop()

    asyncio.run(run())


def test_a_pixel_batch_keeps_each_image_in_order_through_concat_and_back_to_a_tensor() -> None:
    images = torch.arange(3 * 28 * 28, dtype=torch.int64).remainder(251).to(torch.uint8).view(3, 28, 28)
    first, rest = PixelBatch.from_tensor(images[:1]), PixelBatch.from_tensor(images[1:])
    joined = PixelBatch.concat([first, rest])
    assert len(joined) == 3 and torch.equal(joined.tensor(), images)
    assert [joined.image(i) for i in range(3)] == [images[i].numpy().tobytes() for i in range(3)]
    assert PixelBatch.of([joined.image(2), joined.image(0)]).tensor().equal(images[[2, 0]])
    with pytest.raises(ValueError, match="not 2 images"):
        PixelBatch(bytes(IMAGE_BYTES), 2)
    with pytest.raises(IndexError):
        joined.image(3)
