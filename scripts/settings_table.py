"""Print the README's configuration table from app.config.Settings, so the docs cannot drift from the code."""

from __future__ import annotations

from app.config import Settings


def settings_table() -> str:
    rows = ["| variable | default | meaning |", "| --- | --- | --- |"]
    for name, field in Settings.model_fields.items():
        default = field.get_default(call_default_factory=True)
        shown = "(none)" if default is None or default == [] else f"`{default}`"
        rows.append(f"| `FASHION_{name.upper()}` | {shown} | {field.description or ''} |")
    return "\n".join(rows)


if __name__ == "__main__":
    print(settings_table())
