"""A stream that says it is a terminal, and what a redrawn bar is taken off with, for the
tests of the progress display (unit) and of what ``run`` prints (end to end)."""

import io

CLEAR = "\r\x1b[K"


class Terminal(io.StringIO):
    """A stream that says it is a terminal (what the bar is drawn on)."""

    def isatty(self) -> bool:
        if self.closed:  # as a real file's
            raise ValueError("I/O operation on closed file")
        return True
