"""One Settings object, read from FASHION_* environment variables and validated at start-up."""

from __future__ import annotations

import difflib
import hmac
import json
import logging
import os
import re
from collections.abc import Mapping
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any, Literal, Self

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_core import ErrorDetails
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from app.logs import configure_logging
from models import DEVICE_CHOICES

log = logging.getLogger("app.config")
ENV_PREFIX = "FASHION_"
# FASHION_* variables that other programs of the project read (the trainer: training/data.py): not misspellings.
OTHER_PROGRAMS_VARIABLES = frozenset({"FASHION_DATA_DIR"})
# An origin as a browser sends it (RFC 6454): scheme, lower-case host, optional port; no path, not even "/".
ORIGIN = re.compile(r"https?://(?:[a-z0-9-]+(?:\.[a-z0-9-]+)*|\[[0-9a-f:.]+\])(?::(?P<port>[0-9]{1,5}))?")
ORIGIN_FORM = "write scheme://host[:port] as a browser sends it, such as https://app.example, without a path or '/'"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, env_file=None, extra="ignore")

    model_path: Path = Field(
        Path("artifacts/model.safetensors"),
        description="artifact to serve (.safetensors, or a quickstart .pth state dict)",
    )
    model_store: Path | None = Field(
        None,
        description="model store directory (versions and state.json, docs/lifecycle.md); when set it wins over "
        "FASHION_MODEL_PATH, which is then ignored",
    )
    model_poll_s: float = Field(2.0, gt=0, description="seconds between reads of the store's state file")
    min_accuracy: float = Field(
        0.90, ge=0, le=1, description="a store version whose recorded accuracy is below this never serves"
    )
    admin_key: SecretStr | None = Field(
        None,
        description=(
            "if set, model changes (activate, rollback, canary, shadow) need 'Authorization: Bearer <admin key>'"
        ),
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
    # NoDecode: the validator below reads the variable, so a plain comma-separated list is not parsed as JSON.
    cors_origins: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="origins allowed by CORS; empty = CORS off"
    )
    log_level: Literal["debug", "info", "warning", "error"] = Field("info", description="debug, info, warning or error")

    @field_validator("device")
    @classmethod
    def _known_device(cls, value: str) -> str:
        if value not in DEVICE_CHOICES and not value.startswith("cuda:"):
            raise ValueError(f"must be one of {', '.join(DEVICE_CHOICES)} or cuda:N")
        return value

    @field_validator("api_key", "admin_key")
    @classmethod
    def _usable_key(cls, value: SecretStr | None) -> SecretStr | None:
        """A blank key would admit `Authorization: Bearer` with nothing after it; the messages never show the key."""
        key = None if value is None else value.get_secret_value()
        if key is not None and not key.strip():
            raise ValueError("is empty: set a key, or unset the variable to turn the key check off")
        if key is not None and key != key.strip():
            raise ValueError("starts or ends with whitespace, which an Authorization header cannot carry: remove it")
        return value

    @field_validator("cors_origins", mode="before")
    @classmethod
    def _origin_list(cls, value: Any) -> Any:
        """A comma-separated list as a person types it, or a JSON list; every entry an origin, or "*" for any."""
        if isinstance(value, str):
            value = _parse_origin_list(value)
        if isinstance(value, list):
            bad = [origin for origin in value if not isinstance(origin, str) or not _is_origin(origin)]
            if bad:
                raise ValueError(f"not an origin: {', '.join(repr(origin) for origin in bad)} ({ORIGIN_FORM})")
        return value

    @model_validator(mode="after")
    def _admin_key_is_its_own(self) -> Self:
        """A client holding the API key must not be able to change models with it."""
        admin, api = self.admin_key, self.api_key
        if (
            admin is not None
            and api is not None
            and hmac.compare_digest(admin.get_secret_value(), api.get_secret_value())
        ):
            raise ValueError("FASHION_ADMIN_KEY: must differ from FASHION_API_KEY")
        return self

    @model_validator(mode="after")
    def _queue_holds_one_request(self) -> Self:
        """The batcher refuses a request of more images than the queue holds, so such a request could never run."""
        if self.max_queue < self.max_images_per_request:
            raise ValueError(
                f"FASHION_MAX_QUEUE: {self.max_queue} is below FASHION_MAX_IMAGES_PER_REQUEST "
                f"({self.max_images_per_request}): a request of that many images could never be queued (503 forever);"
                " raise FASHION_MAX_QUEUE or lower FASHION_MAX_IMAGES_PER_REQUEST"
            )
        return self


def _parse_origin_list(text: str) -> list[Any]:
    text = text.strip()
    if not text.startswith(("[", "{")):
        return [origin.strip() for origin in text.split(",") if origin.strip()]
    try:
        parsed = json.loads(text)
    except json.JSONDecodeError as exc:
        message = f"starts like JSON but is not a JSON list ({exc.msg}); or write origins separated by commas"
        raise ValueError(message) from None
    if not isinstance(parsed, list):
        raise ValueError("is JSON but not a JSON list; write a list of origins, or origins separated by commas")
    return parsed


def _is_origin(origin: str) -> bool:
    match = ORIGIN.fullmatch(origin)
    return origin == "*" or (match is not None and int(match["port"] or 0) <= 65535)


def unknown_variables(environ: Mapping[str, str]) -> list[str]:
    """A line for each FASHION_* variable that is no setting (names are case-insensitive), naming the closest one."""
    settings = [name.upper() for name in Settings.model_fields]
    lines = []
    for variable in sorted(environ):
        name = variable.upper()
        if not name.startswith(ENV_PREFIX) or name in OTHER_PROGRAMS_VARIABLES:
            continue
        suffix = name.removeprefix(ENV_PREFIX)
        if suffix in settings:
            continue
        closest = difflib.get_close_matches(suffix, settings, n=1)
        hint = f"did you mean {ENV_PREFIX}{closest[0]}?" if closest else "no setting has a name like it"
        lines.append(f"{variable}: not a setting, ignored; {hint}")
    return lines


def _problem(error: ErrorDetails) -> str:
    """One line: the variable, then what is wrong with it (a model-wide check names its variables itself)."""
    message = str(error["ctx"]["error"]) if error["type"] == "value_error" else error["msg"]
    variable = "_".join(str(part) for part in error["loc"]).upper()
    return f"  {ENV_PREFIX}{variable}: {message}" if variable else f"  {message}"


@lru_cache
def get_settings() -> Settings:
    """Settings from the environment; a bad value stops start-up with one line per variable to fix, and a
    misspelt name (which would be ignored) is warned about, with its closest setting."""
    unknown = unknown_variables(os.environ)
    try:
        settings = Settings()
    except ValidationError as exc:
        problems = [_problem(error) for error in exc.errors()] + [f"  {line}" for line in unknown]
        raise SystemExit("invalid configuration (fix these environment variables):\n" + "\n".join(problems)) from None
    configure_logging(settings.log_level)  # so the warnings are the app's JSON lines, at its level
    for line in unknown:
        log.warning(line)
    return settings
