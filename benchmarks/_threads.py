"""The benchmarks' timed worker-thread loop: N threads each calling one function on random keys."""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable, Sequence


def run_threads(
    threads: int,
    seconds: float,
    work: Callable[[int], Callable[[str], object]],
    keys: Sequence[str],
) -> float:
    """Calls per second of ``threads`` threads, thread ``i`` calling ``work(i)`` on random keys.

    Every ``work(i)`` runs (and connects) before the clock starts, and a barrier starts the
    threads together, so set-up cost is not measured; the first error a thread raises is
    raised here after all have stopped.
    """
    counts = [0] * threads
    fns = [work(i) for i in range(threads)]
    barrier = threading.Barrier(threads)
    errors: list[BaseException] = []

    def loop(i: int) -> None:
        rng = random.Random(i)
        fn = fns[i]
        barrier.wait()
        stop = time.monotonic() + seconds
        n = 0
        try:
            while time.monotonic() < stop:
                fn(rng.choice(keys))
                n += 1
        except BaseException as exc:
            errors.append(exc)
        counts[i] = n

    ts = [threading.Thread(target=loop, args=(i,)) for i in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    if errors:
        raise errors[0]
    return sum(counts) / seconds
