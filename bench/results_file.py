"""bench/RESULTS.md has several writers (bench/run.py, bench/soak.py, notes by hand): each replaces what it owns."""

from __future__ import annotations

import re
from pathlib import Path

SECTION_START = re.compile(r"^(?=## )", re.MULTILINE)


def update(path: Path, sections: dict[str, list[str]], head: list[str] | None = None) -> None:
    """Replace (or append) each given ``## `` section and, if given, the head (everything before the first ``## ``).

    Every other section stays as it is, where it is.
    """
    text = path.read_text() if path.exists() else "# Benchmark results\n"
    old_head, *blocks = SECTION_START.split(text)
    by_title = {block.splitlines()[0].strip(): block.rstrip() + "\n" for block in blocks}
    for title, lines in sections.items():
        by_title[title] = "\n".join([title, "", *lines]).rstrip() + "\n"
    new_head = "\n".join(head) if head is not None else old_head
    path.write_text(new_head.rstrip() + "\n" + "".join(f"\n{block}" for block in by_title.values()))
