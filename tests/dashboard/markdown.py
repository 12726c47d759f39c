"""What a browser shows of the Markdown the pages write (AppTest returns the source)."""

from __future__ import annotations

import re


def shown(markdown: str) -> str:
    """``markdown`` as displayed: the escapes of :func:`dashboard.format.md` undone.

    >>> shown(r"gpt\\-small \\*\\*")
    'gpt-small **'
    """
    return re.sub(r"\\(.)", r"\1", markdown).replace("\u2060", "")
