"""Print the first fenced code block under a heading of README.md, so that
CI runs the very lines a reader copies:
``python readme_block.py README.md "Quick start" [N]`` prints the Nth block
(0-based) of that section."""
from __future__ import annotations

import re
import sys


def block(text: str, heading: str, index: int = 0) -> str:
    section = re.search(rf"^#+ {re.escape(heading)}\n(.*?)(?=^#+ |\Z)", text,
                        re.MULTILINE | re.DOTALL)
    if section is None:
        sys.exit(f"no section {heading!r}")
    blocks = re.findall(r"^```[a-z]*\n(.*?)^```", section.group(1), re.MULTILINE | re.DOTALL)
    if len(blocks) <= index:
        sys.exit(f"section {heading!r} has {len(blocks)} code blocks, not {index + 1}")
    return str(blocks[index])


if __name__ == "__main__":
    with open(sys.argv[1]) as f:
        print(block(f.read(), sys.argv[2], int(sys.argv[3]) if len(sys.argv) > 3 else 0),
              end="")
