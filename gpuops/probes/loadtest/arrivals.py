"""Open-loop arrival schedules for `--qps`: when each request is due, decided before any is sent.

    >>> s = ArrivalSchedule(rate=4.0, arrival="constant", seed=0, worker=0, workers=1, end_s=1.0)
    >>> [s.next_due() for _ in range(5)]
    [0.0, 0.25, 0.5, 0.75, None]

A closed loop (N users, each sending when its last answer arrives) slows down when the server
does, so it never sees the queue a real arrival stream would build. Here the due times are fixed
in advance; a request that leaves later than due is measured as send lag (coordinated omission).

With several worker processes each one takes an equal share: a Poisson stream of rate R split in
W independent Poisson streams of rate R/W is again Poisson of rate R; a constant stream is
interleaved (worker w sends at w/R, w/R + W/R, ...).
"""

from __future__ import annotations

import random

ARRIVALS = ("poisson", "constant")


class ArrivalSchedule:
    """Due times in seconds from the schedule's start, for one worker process; None after `end_s`."""

    def __init__(self, rate: float, arrival: str, seed: int, worker: int = 0, workers: int = 1,
                 end_s: float | None = None):
        if rate <= 0:
            raise ValueError("rate must be > 0")
        if arrival not in ARRIVALS:
            raise ValueError(f"arrival must be one of {ARRIVALS}")
        if not 0 <= worker < workers:
            raise ValueError("worker must be in [0, workers)")
        self.arrival = arrival
        self.worker_rate = rate / workers
        self.end_s = end_s
        # One generator per worker, derived from the seed: reproducible and independent.
        self._rng = random.Random(f"{seed}/{worker}")
        # A Poisson stream's first arrival is one random gap after the start, like every later one.
        self._next = worker / rate if arrival == "constant" else self._rng.expovariate(self.worker_rate)

    def next_due(self) -> float | None:
        """The next due offset (seconds), or None once the schedule has ended."""
        due = self._next
        if self.end_s is not None and due >= self.end_s:
            return None
        if self.arrival == "constant":
            self._next = due + 1.0 / self.worker_rate
        else:
            self._next = due + self._rng.expovariate(self.worker_rate)
        return due


def due_count(rate: float, arrival: str, seed: int, worker: int = 0, workers: int = 1,
              end_s: float | None = None, until_s: float | None = None) -> int:
    """How many requests one worker's schedule made due before `end_s` (and before `until_s`, when
    the load stopped early): the same sequence the worker drew, so unsent ones can be counted.

        >>> due_count(4.0, "constant", seed=0, end_s=1.0), due_count(4.0, "constant", 0, end_s=1.0, until_s=0.3)
        (4, 2)
    """
    bounds = [x for x in (end_s, until_s) if x is not None]
    if not bounds:
        raise ValueError("an open-ended schedule needs until_s")
    limit = min(bounds)
    schedule = ArrivalSchedule(rate, arrival, seed, worker=worker, workers=workers, end_s=limit)
    n = 0
    while schedule.next_due() is not None:
        n += 1
    return n
