import os
import subprocess
import sys
from pathlib import Path

from scripts.settings_table import settings_table

ROOT = Path(__file__).resolve().parent.parent


def test_bad_setting_stops_startup_naming_the_variable() -> None:
    env = {**os.environ, "FASHION_MAX_UPLOAD_BYTES": "0", "FASHION_DEVICE": "gpu"}
    result = subprocess.run(
        [sys.executable, "-m", "uvicorn", "app.main:app", "--port", "1"],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert "FASHION_MAX_UPLOAD_BYTES: Input should be greater than or equal to 1" in result.stderr
    assert "FASHION_DEVICE" in result.stderr
    assert "Traceback" not in result.stderr


def test_readme_configuration_table_matches_settings() -> None:
    assert settings_table() in (ROOT / "README.md").read_text(), "run: python scripts/settings_table.py"
