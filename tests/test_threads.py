"""The training loop's thread choice (seglab/threads.py) on made-up step times.

The step times are a function of the thread count the code has set, as on the machine: idle, 2
threads take 1.0 s and 1 thread 1.35 s (the demo's step); beside a busy process 2 threads take
3.2 s and 1 thread 1.9 s (the ratios measured on the project's 2-core machine).
"""

from __future__ import annotations

import pytest
import torch

from seglab.threads import AdaptiveThreads, adaptive_threads_enabled

IDLE = {2: 1.0, 1: 1.35}
BUSY = {2: 3.2, 1: 1.9}


@pytest.fixture(autouse=True)
def _restore_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def _run(chooser: AdaptiveThreads, loads: list[dict[int, float]]) -> list[int]:
    """Feed one step per entry of `loads`; returns the thread count each step ran with."""
    used = []
    for load in loads:
        threads = torch.get_num_threads()
        used.append(threads)
        chooser.record(load[threads])
    return used


def test_idle_keeps_all_threads_and_probes_one_thread_rarely():
    used = _run(AdaptiveThreads(most=2), [IDLE] * 1000)
    # 4 probe steps at 1 thread (one warms up) after the first 5 steps, then after every 100
    # at 2 threads: probes at 5, 109, 213, ..., 941
    one = used.count(1)
    assert used[-1] == 2 and used[5:9] == [1] * 4 and one == 4 * 10
    # what that costs: (one * 1.35 + (1000 - one) * 1.0) / 1000 - 1 = one * 0.35 / 1000 = 1.4 %
    assert one * (IDLE[1] - IDLE[2]) / 1000 < 0.015


def test_a_busy_process_switches_to_one_thread_within_a_dozen_steps():
    used = _run(AdaptiveThreads(most=2), [IDLE] * 50 + [BUSY] * 200)
    busy = used[50:]
    # the 5-step window sees the slow-down after 3 busy steps, then 4 probe steps: step 7 on
    assert busy[:3] == [2, 2, 2] and set(busy[8:20]) == {1}
    assert busy.count(2) <= 8 + 4 * 2  # later probes of 2 threads: every 100 steps, 4 each


def test_the_load_going_away_brings_all_threads_back():
    used = _run(AdaptiveThreads(most=2), [BUSY] * 100 + [IDLE] * 100)
    assert set(used[9:100]) == {1}  # busy from the start: the first probe (steps 6-9) switches
    assert set(used[115:]) == {2}  # the 1.35 s vs 1.9 s speed-up triggers a probe at once


def test_one_thread_or_off_never_changes_the_count():
    torch.set_num_threads(2)
    assert _run(AdaptiveThreads(enabled=False), [IDLE] * 20 + [BUSY] * 50) == [2] * 70
    assert _run(AdaptiveThreads(most=1), [BUSY] * 20 + [IDLE] * 50) == [1] * 70


def test_only_on_the_cpu_and_not_with_seglab_omp_defaults_0(monkeypatch):
    monkeypatch.delenv("SEGLAB_OMP_DEFAULTS", raising=False)
    assert adaptive_threads_enabled(torch.device("cpu"))
    assert not adaptive_threads_enabled(torch.device("cuda"))
    monkeypatch.setenv("SEGLAB_OMP_DEFAULTS", "0")
    assert not adaptive_threads_enabled(torch.device("cpu"))


def test_close_puts_torchs_count_back():
    torch.set_num_threads(2)
    chooser = AdaptiveThreads()
    _run(chooser, [BUSY] * 30)
    assert torch.get_num_threads() == 1
    chooser.close()
    assert torch.get_num_threads() == 2


class _BusyClock:
    """seglab.inference.perf_counter: every call to it advances by half the busy
    machine's time at torch's current thread count (two calls bracket one prediction)."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        self.now += BUSY[min(torch.get_num_threads(), 2)] / 2
        return self.now


def test_segmenter_calls_move_to_one_thread_when_busy_and_leave_torchs_count(monkeypatch):
    import numpy as np

    import seglab.inference
    from seglab.inference import Segmenter
    from seglab.models import create_model

    torch.set_num_threads(2)
    monkeypatch.delenv("SEGLAB_OMP_DEFAULTS", raising=False)
    monkeypatch.setattr(seglab.inference, "perf_counter", _BusyClock())
    model = create_model("unet", 3, 3, width=4, depth=2, padding="same", batch_norm=True)
    segmenter = Segmenter(model, variant="eager")
    image = np.zeros((16, 24, 3), np.uint8)
    counts = []
    for _ in range(20):
        segmenter.predict(image)
        counts.append(segmenter.threads.current)
        assert torch.get_num_threads() == 2  # the caller's count, after every call
    # 5 calls fill the window, the probe runs 4 at one thread (the first warms up), then stays
    assert segmenter.threads.switches == [(9, 1)] and counts[9:] == [1] * 11
