"""The one writer of `make run`'s narration.

`[guest]` lines come from the console reader thread, `[device]` and `[tsm]` lines from
one log follower thread per server, the rest from the main thread.  `print()` writes a
line and its newline as two writes, and a text stream lets another thread's write in
between, so lines printed from several threads merge mid-line.  Every narration line
goes through one `Narrator`: one lock, one `write()` of the whole line, one flush, so a
line is never split and lines come out in the order they were said.
"""

from __future__ import annotations

import sys
import threading
from typing import TextIO


class Narrator:
    """Writes whole lines to `stream` (standard output, looked up at each line, when
    None) from any thread."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self._stream = stream
        self._lock = threading.Lock()
        self._gone = False

    def say(self, line: str) -> None:
        text = line if line.endswith("\n") else line + "\n"
        with self._lock:
            if self._gone:
                return
            stream = self._stream if self._stream is not None else sys.stdout
            try:
                stream.write(text)
                stream.flush()
            except BrokenPipeError:
                # The reader left (`make run | head`).  The main thread reports it
                # through the command line's guard; other threads just stop talking.
                self._gone = True
                if threading.current_thread() is threading.main_thread():
                    raise


#: The narration of `make run` and `make vm` on standard output.
NARRATOR = Narrator()
