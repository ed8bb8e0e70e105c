import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from app.config import Settings, get_settings
from scripts.settings_table import settings_table

ROOT = Path(__file__).resolve().parent.parent
HEADER = "invalid configuration (fix these environment variables):"


@pytest.fixture
def environment(monkeypatch: pytest.MonkeyPatch) -> Iterator[pytest.MonkeyPatch]:
    """No FASHION_* variable but those a test sets, and get_settings() reading them afresh."""
    for name in os.environ:
        if name.upper().startswith("FASHION_"):
            monkeypatch.delenv(name)
    get_settings.cache_clear()
    yield monkeypatch
    get_settings.cache_clear()


def startup_problems(monkeypatch: pytest.MonkeyPatch, **variables: str) -> list[str]:
    """The lines get_settings() stops start-up with, for these FASHION_* variables."""
    for name, value in variables.items():
        monkeypatch.setenv(f"FASHION_{name.upper()}", value)
    with pytest.raises(SystemExit) as stopped:
        get_settings()
    lines = str(stopped.value.code).splitlines()
    assert lines[0] == HEADER
    return lines[1:]


def clean_environment(**variables: str) -> dict[str, str]:
    """This process's environment less its FASHION_* variables, plus these."""
    env = {name: value for name, value in os.environ.items() if not name.upper().startswith("FASHION_")}
    return {**env, **{f"FASHION_{name.upper()}": value for name, value in variables.items()}}


def start_uvicorn(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """``uvicorn app.main:app`` with ``env``, to its end: each test here expects it to stop at start-up."""
    command = [sys.executable, "-m", "uvicorn", "app.main:app", "--port", "1"]
    return subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True, timeout=60)


def test_bad_setting_stops_startup_naming_the_variable() -> None:
    env = {**os.environ, "FASHION_MAX_UPLOAD_BYTES": "0", "FASHION_DEVICE": "gpu"}
    result = start_uvicorn(env)
    assert result.returncode != 0
    assert "FASHION_MAX_UPLOAD_BYTES: Input should be greater than or equal to 1" in result.stderr
    assert "FASHION_DEVICE" in result.stderr
    assert "Traceback" not in result.stderr


def test_typed_mistakes_stop_uvicorn_with_one_line_each() -> None:
    """What a person types: a plain origin list with a bad entry, a blank key, a misspelt name."""
    env = clean_environment(cors_origins="https://ok.example, app.example", api_key=" ", max_qeue="8")
    result = start_uvicorn(env)
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    lines = result.stderr.splitlines()
    start = lines.index(HEADER)
    problems = lines[start + 1 :]
    assert [line.split(":")[0] for line in problems] == [
        "  FASHION_API_KEY",
        "  FASHION_CORS_ORIGINS",
        "  FASHION_MAX_QEUE",
    ]
    assert "'app.example'" in problems[1] and "ok.example" not in problems[1]
    assert "did you mean FASHION_MAX_QUEUE?" in problems[2]


@pytest.mark.parametrize("key", ["", " ", "\t \n"])
def test_blank_api_key_stops_startup(environment: pytest.MonkeyPatch, key: str) -> None:
    """A blank key would let `Authorization: Bearer` with nothing after it through."""
    assert startup_problems(environment, api_key=key) == [
        "  FASHION_API_KEY: is empty: set a key, or unset the variable to turn the key check off"
    ]


@pytest.mark.parametrize("key", [" s3cret", "s3cret\n"])
def test_api_key_with_outer_whitespace_stops_startup(environment: pytest.MonkeyPatch, key: str) -> None:
    """The header's token is stripped, so such a key could never match: every request would be 401."""
    (problem,) = startup_problems(environment, api_key=key)
    assert problem.startswith("  FASHION_API_KEY: starts or ends with whitespace")
    assert "s3cret" not in problem  # the key never appears in a message


@pytest.mark.parametrize(
    ("typed", "origins"),
    [
        ("https://a.example", ["https://a.example"]),
        ("https://a.example,http://localhost:8080", ["https://a.example", "http://localhost:8080"]),
        (" https://a.example , https://b.example ,", ["https://a.example", "https://b.example"]),
        ('["https://a.example", "http://[::1]:3000"]', ["https://a.example", "http://[::1]:3000"]),
        ("*", ["*"]),
        ("", []),
    ],
)
def test_cors_origins_as_typed(environment: pytest.MonkeyPatch, typed: str, origins: list[str]) -> None:
    environment.setenv("FASHION_CORS_ORIGINS", typed)
    assert get_settings().cors_origins == origins


@pytest.mark.parametrize(
    ("typed", "named"),
    [
        ("a.example", "'a.example'"),
        ("https://a.example/", "'https://a.example/'"),
        ("https://a.example/app", "'https://a.example/app'"),
        ("ftp://a.example", "'ftp://a.example'"),
        ("https://A.example", "'https://A.example'"),
        ("https://a.example, https://b.example:99999", "'https://b.example:99999'"),
        ('["https://a.example", 3]', "3"),
    ],
)
def test_bad_cors_origin_is_one_line_naming_it(environment: pytest.MonkeyPatch, typed: str, named: str) -> None:
    (problem,) = startup_problems(environment, cors_origins=typed)
    assert problem.startswith(f"  FASHION_CORS_ORIGINS: not an origin: {named} (")
    assert "https://app.example" in problem  # the example of the right form


@pytest.mark.parametrize("typed", ["[https://a.example]", '{"origin": "https://a.example"}'])
def test_cors_origins_that_look_like_json_but_are_not_a_list(environment: pytest.MonkeyPatch, typed: str) -> None:
    (problem,) = startup_problems(environment, cors_origins=typed)
    assert problem.startswith("  FASHION_CORS_ORIGINS: ")
    assert "JSON list" in problem


def test_cors_origins_are_checked_in_python_too(artifact_path: Path) -> None:
    with pytest.raises(ValueError, match=r"not an origin: 'https://a\.example/'"):
        Settings(model_path=artifact_path, cors_origins=["https://a.example/"])


def test_queue_smaller_than_one_request_stops_startup(environment: pytest.MonkeyPatch) -> None:
    """Every request of more images than the queue holds would be refused with 503, forever."""
    assert startup_problems(environment, max_queue="8", max_images_per_request="16") == [
        "  FASHION_MAX_QUEUE: 8 is below FASHION_MAX_IMAGES_PER_REQUEST (16): a request of that many images could "
        "never be queued (503 forever); raise FASHION_MAX_QUEUE or lower FASHION_MAX_IMAGES_PER_REQUEST"
    ]


def test_queue_as_large_as_one_request_is_accepted(environment: pytest.MonkeyPatch) -> None:
    environment.setenv("FASHION_MAX_QUEUE", "16")
    environment.setenv("FASHION_MAX_IMAGES_PER_REQUEST", "16")
    settings = get_settings()
    assert (settings.max_queue, settings.max_images_per_request) == (16, 16)


def test_misspelt_variable_is_warned_about_naming_the_closest_setting() -> None:
    """A real start-up's settings step: the warning is one of the app's JSON log lines, on stderr."""
    env = clean_environment(max_qeue="8", api_kye="k", nonsense_knob="1", data_dir="/tmp", log_level="info")
    result = subprocess.run(
        [sys.executable, "-c", "from app.config import get_settings; get_settings()"],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    warnings = [json.loads(line) for line in result.stderr.splitlines()]
    assert [(w["level"], w["logger"]) for w in warnings] == [("warning", "app.config")] * 3
    assert [w["message"] for w in warnings] == [
        "FASHION_API_KYE: not a setting, ignored; did you mean FASHION_API_KEY?",
        "FASHION_MAX_QEUE: not a setting, ignored; did you mean FASHION_MAX_QUEUE?",
        "FASHION_NONSENSE_KNOB: not a setting, ignored; no setting has a name like it",
    ]


def test_readme_configuration_table_matches_settings() -> None:
    assert settings_table() in (ROOT / "README.md").read_text(), "run: python scripts/settings_table.py"
