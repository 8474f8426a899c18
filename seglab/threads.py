"""The CPU thread count of the training loop and of Segmenter calls, chosen by measured time.

On an idle 2-core machine two torch threads are fastest (the demo's step: ~1.35x one thread).
Beside one other CPU-bound process they are the slowest choice: every OpenMP barrier waits for
the thread the scheduler has put off its core, while its peer spins (the demo's step: 3.2-3.4x
its idle time with 2 threads, 1.9x with 1). libgomp's OMP_WAIT_POLICY=PASSIVE avoids the spin
but costs the idle step 25-30 % (futex wake-ups at each of the step's thousands of small parallel
regions), so seglab keeps torch's spinning threads and measures instead: after the first 5
steps, after every `every` steps, and at once when the steps slow down or speed up by a third,
it runs `probe` steps with the other thread count and keeps the faster. Idle that costs ~1.5 %
(4 of ~100 steps at one thread, the first of them warming up); a load that comes or goes is
followed within about 10 steps. CPU only; SEGLAB_OMP_DEFAULTS=0 turns it off.
"""

from __future__ import annotations

import os
import statistics
from collections import deque

import torch

SLOWER = 1.33  # the recent median this factor off the settled one: probe now
BETTER = 0.9  # the other count must be this much faster to switch


def adaptive_threads_enabled(device: torch.device) -> bool:
    return device.type == "cpu" and os.environ.get("SEGLAB_OMP_DEFAULTS", "1") != "0"


class AdaptiveThreads:
    """Call `record(seconds)` after every training step; it sets torch's thread count.

    most: the thread count to use when the cores are free (torch.get_num_threads() by default);
    with 1 (or enabled=False) there is nothing to choose and record() does nothing.
    """

    def __init__(
        self,
        most: int | None = None,
        every: int = 100,
        probe: int = 3,
        window: int = 5,
        enabled: bool = True,
    ) -> None:
        self.before = torch.get_num_threads()  # close() puts it back
        self.most = (most or self.before) if enabled else 1
        self.every, self.probe = every, probe
        self.chosen = self.most
        self.recent: deque[float] = deque(maxlen=window)  # step times at `chosen`
        self.settled: float | None = None  # their median once the window was full
        self.probe_times: list[float] = []
        self.probing = False
        self.since_probe = every  # the first full window is followed by a probe
        self.switches: list[tuple[int, int]] = []  # (steps recorded, new count), for logs/tests
        self.steps = 0
        if enabled:
            torch.set_num_threads(self.chosen)

    def close(self) -> None:
        """Back to the thread count torch had before (what runs after training is not timed)."""
        torch.set_num_threads(self.before)

    @property
    def other(self) -> int:
        return 1 if self.chosen == self.most else self.most

    @property
    def current(self) -> int:
        """The count the next step runs at: the probed one while probing."""
        return self.other if self.probing else self.chosen

    def record(self, seconds: float) -> None:
        if self.most <= 1:
            return
        self.steps += 1
        if self.probing:
            self.probe_times.append(seconds)
            if len(self.probe_times) > self.probe:  # the first probe step warms the new count
                self._decide()
            return
        self.recent.append(seconds)
        self.since_probe += 1
        if len(self.recent) < self.recent.maxlen:
            return
        median = statistics.median(self.recent)
        if self.settled is None:
            self.settled = median
        changed = median > SLOWER * self.settled or SLOWER * median < self.settled
        if changed or self.since_probe >= self.every:
            self.probing, self.probe_times = True, []
            torch.set_num_threads(self.other)

    def _decide(self) -> None:
        probed = statistics.median(self.probe_times[1:])
        current = statistics.median(self.recent)
        self.probing, self.since_probe = False, 0
        if probed < BETTER * current:
            self.chosen = self.other
            self.switches.append((self.steps, self.chosen))
            self.recent.clear()
            self.settled = None
        else:
            self.settled = current  # the load of now is the new normal for this count
        torch.set_num_threads(self.chosen)
