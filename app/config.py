"""One Settings object, read from FASHION_* environment variables and validated at start-up."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from models import DEVICE_CHOICES


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="FASHION_", env_file=None, extra="ignore")

    model_path: Path = Field(
        Path("artifacts/model.safetensors"),
        description="artifact to serve (.safetensors, or a quickstart .pth state dict)",
    )
    device: str = Field("auto", description="auto (cuda, then mps, then cpu), cuda, cuda:N, mps or cpu")
    require_model: bool = Field(
        False, description="exit at start-up if the model cannot be loaded, instead of serving 503s"
    )
    max_upload_bytes: int = Field(10 * 1024 * 1024, ge=1, description="largest request body accepted, in bytes")
    max_images_per_request: int = Field(64, ge=1, description="most images in one /predict request")
    max_image_pixels: int = Field(
        40_000_000, ge=784, description="largest declared width x height decoded (decompression-bomb guard)"
    )
    decode_concurrency: int = Field(
        2, ge=1, description="large images decoded at once, off the event loop; each holds up to ~15 bytes a pixel"
    )
    body_timeout_s: float = Field(
        30.0, gt=0, description="seconds a client has to send the whole request body, then 408 (slow-client guard)"
    )
    request_timeout_s: float = Field(
        60.0, gt=0, description="seconds a request may take in all, then 503 (a stuck model answers, never hangs)"
    )
    idle_timeout_s: float = Field(
        10.0, gt=0, description="seconds a new connection may stay silent before it is closed (fashion-serve)"
    )
    header_timeout_s: float = Field(
        10.0, gt=0, description="seconds a request's headers may take from its first byte, then 408 (fashion-serve)"
    )
    max_header_line_bytes: int = Field(
        8192, ge=256, description="longest request line or header line, then 431 (fashion-serve)"
    )
    max_header_bytes: int = Field(
        32768, ge=1024, description="request line and headers together, then 431 (fashion-serve)"
    )
    max_headers: int = Field(100, ge=8, description="most header lines in one request, then 431 (fashion-serve)")
    top_k: int = Field(3, ge=1, le=10, description="default length of the top-k list")
    batching: bool = Field(True, description="gather concurrent requests into one forward pass")
    max_batch_size: int = Field(64, ge=1, description="most images in one forward pass")
    max_batch_wait_ms: float = Field(0.0, ge=0, description="extra wait for a batch to fill; 0 = take what is queued")
    max_queue: int = Field(1024, ge=1, description="images waiting for the model before /predict answers 503")
    torch_threads: int | None = Field(None, ge=1, description="torch intra-op threads (default: torch's choice)")
    api_key: SecretStr | None = Field(
        None, description="if set, /predict and /model* need 'Authorization: Bearer <key>'"
    )
    cors_origins: list[str] = Field(default_factory=list, description="origins allowed by CORS; empty = CORS off")
    log_level: Literal["debug", "info", "warning", "error"] = Field("info", description="debug, info, warning or error")

    @field_validator("device")
    @classmethod
    def _known_device(cls, value: str) -> str:
        if value not in DEVICE_CHOICES and not value.startswith("cuda:"):
            raise ValueError(f"must be one of {', '.join(DEVICE_CHOICES)} or cuda:N")
        return value


@lru_cache
def get_settings() -> Settings:
    """Settings from the environment; a bad value stops start-up with one line per variable to fix."""
    try:
        return Settings()
    except ValidationError as exc:
        problems = [
            f"  FASHION_{'_'.join(str(part) for part in error['loc']).upper()}: {error['msg']}"
            for error in exc.errors()
        ]
        raise SystemExit("invalid configuration (fix these environment variables):\n" + "\n".join(problems)) from None
