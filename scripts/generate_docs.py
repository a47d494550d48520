#!/usr/bin/env python3
"""Regenerate the parts of the docs that are generated from the code, or check them.

    python scripts/generate_docs.py          # rewrite them in place
    python scripts/generate_docs.py --check  # exit 1 naming each file that differs (the tests run this)

A generated part of a Markdown file sits between ``<!-- BEGIN GENERATED: NAME ... -->`` and
``<!-- END GENERATED: NAME -->``; everything outside the markers is written by hand. Sections:

- ``tiers`` (README.md): the import tiers, from `kv_vla_ros.tiers.TIERS`.

To add one: write a function returning the text and list it in `SECTIONS`.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the checkout's package, whatever is installed


def tiers_table() -> str:
    from kv_vla_ros.tiers import markdown_table

    return markdown_table()


# (file relative to the repository, section name, generator)
SECTIONS: list[tuple[str, str, Callable[[], str]]] = [
    ("README.md", "tiers", tiers_table),
]
# whole files written by a generator (name relative to the repository, generator)
FILES: list[tuple[str, Callable[[], str]]] = []


def replace_section(text: str, name: str, body: str, where: str) -> str:
    pattern = re.compile(rf"(<!-- BEGIN GENERATED: {re.escape(name)}\b[^>]*-->\n)(.*?)(<!-- END GENERATED: "
                         rf"{re.escape(name)} -->)", re.S)
    if not pattern.search(text):
        raise SystemExit(f"{where}: no '<!-- BEGIN GENERATED: {name} -->' ... '<!-- END GENERATED: {name} -->' markers")
    return pattern.sub(lambda m: m.group(1) + body + m.group(3), text, count=1)


def generated() -> dict[Path, str]:
    """``{path: what it should hold}`` for every file with a generated part."""
    out: dict[Path, str] = {}
    for rel, name, make in SECTIONS:
        path = ROOT / rel
        text = out.get(path, path.read_text())
        out[path] = replace_section(text, name, make(), rel)
    for rel, make in FILES:
        out[ROOT / rel] = make()
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="write nothing; exit 1 if a file differs")
    args = parser.parse_args(argv)
    stale = []
    for path, text in generated().items():
        current = path.read_text() if path.exists() else None
        if current == text:
            continue
        stale.append(path.relative_to(ROOT))
        if not args.check:
            path.write_text(text)
    verb = "differs from what is generated" if args.check else "rewritten"
    for rel in stale:
        print(f"{rel}: {verb}", file=sys.stderr if args.check else sys.stdout)
    if args.check and stale:
        print("run: python scripts/generate_docs.py", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
