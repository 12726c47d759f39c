"""The default notifier: one line per alert on the console (standard output)."""

from __future__ import annotations

import sys
from typing import TextIO

from alerts.message import Message
from alerts.notifiers.base import Notifier


class ConsoleNotifier(Notifier):
    """Prints each message's first line (and link) so ``tripwire demo`` shows alerts as they fire.

    >>> import io
    >>> out = io.StringIO()
    >>> ConsoleNotifier(stream=out).send(Message("test", "info", "s", "hello\\nmore", ""))
    >>> out.getvalue()
    '[tripwire] hello | more\\n'
    """

    retries = False

    def __init__(self, name: str = "log", stream: TextIO | None = None):
        super().__init__(name)
        self.stream = stream

    def send(self, message: Message) -> None:
        stream = self.stream or sys.stdout
        lines = message.text.splitlines()
        stream.write("[tripwire] " + _visible(" | ".join(lines)) + "\n")
        stream.flush()


def _visible(text: str) -> str:
    r"""Control and format characters (a run name's ANSI escapes, a right-to-left override) as
    their escapes, so that whoever names a run cannot drive the operator's terminal.

    >>> print(_visible("gpt\x1b[2J\u202e"))
    gpt\x1b[2J\u202e
    """
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode() for c in text)
