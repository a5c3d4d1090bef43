"""`make run`'s narration comes from several threads; every line must come out whole."""

from __future__ import annotations

import threading
import time

import pytest

from vdev.vm.narration import Narrator

THREADS = 6
LINES = 40


class SlowStream:
    """A stream whose write() hands the CPU to other threads between characters, the
    way a terminal's text stream lets another thread's write in between two of ours."""

    def __init__(self) -> None:
        self.chars: list[str] = []

    def write(self, text: str) -> int:
        for ch in text:
            self.chars.append(ch)
            time.sleep(0.00001)
        return len(text)

    def flush(self) -> None:
        pass

    @property
    def text(self) -> str:
        return "".join(self.chars)


def expected_lines() -> set[str]:
    return {f"  [t{t}]    line {n:02d} {'x' * (t + 10)}" for t in range(THREADS)
            for n in range(LINES)}


def write_concurrently(say: object) -> None:
    assert callable(say)
    start = threading.Barrier(THREADS)

    def talk(t: int) -> None:
        start.wait()
        for n in range(LINES):
            say(f"  [t{t}]    line {n:02d} {'x' * (t + 10)}")

    threads = [threading.Thread(target=talk, args=(t,)) for t in range(THREADS)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()


def test_lines_from_many_threads_come_out_whole_and_in_order_per_thread() -> None:
    stream = SlowStream()
    write_concurrently(Narrator(stream).say)  # type: ignore[arg-type]
    lines = stream.text.split("\n")
    assert lines[-1] == ""  # every line ended
    lines = lines[:-1]
    assert sorted(lines) == sorted(expected_lines())
    for t in range(THREADS):  # one thread's lines keep their order
        mine = [line for line in lines if line.startswith(f"  [t{t}] ")]
        assert mine == sorted(mine)


def test_the_rig_does_interleave_unserialised_writes() -> None:
    """Without the narrator, the same writes (print's two writes per line) mix: the
    test above would catch a narrator that lets them."""
    stream = SlowStream()

    def unserialised(line: str) -> None:
        stream.write(line)
        stream.write("\n")

    write_concurrently(unserialised)
    assert set(stream.text.split("\n")[:-1]) != expected_lines()


def test_a_reader_gone_silences_other_threads_and_reaches_the_main_thread() -> None:
    class Gone(SlowStream):
        def write(self, text: str) -> int:
            raise BrokenPipeError(32, "Broken pipe")

    narrator = Narrator(Gone())  # type: ignore[arg-type]
    errors: list[BaseException] = []

    def other() -> None:
        try:
            narrator.say("  [tsm]    from a follower thread")
        except BaseException as exc:  # noqa: BLE001 - recorded for the assertion
            errors.append(exc)

    th = threading.Thread(target=other)
    th.start()
    th.join()
    assert errors == []
    narrator.say("later lines are dropped")  # the main thread: nothing left to say to
    with pytest.raises(BrokenPipeError):  # the command line's guard handles it
        Narrator(Gone()).say("from the main thread")  # type: ignore[arg-type]
