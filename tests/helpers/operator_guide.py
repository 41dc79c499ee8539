"""The operator's guide's walkthrough (docs/operators.md, section 2): its shell blocks, in
order, as the tests run and check them."""

import re

from helpers.paths import REPO

GUIDE = REPO / "docs" / "operators.md"
START, END = "<!-- walkthrough:", "<!-- end walkthrough -->"


def walkthrough() -> str:
    """The shell blocks between the walkthrough markers, in order."""
    text = GUIDE.read_text()
    body = text[text.index(START):text.index(END)]
    blocks = re.findall(r"```sh\n(.*?)```", body, re.DOTALL)
    assert len(blocks) >= 8, "the walkthrough lost its blocks"
    return "\n".join(blocks)

