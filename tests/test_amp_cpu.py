"""train.amp on a CPU: bf16 autocast only where the CPU runs bf16 natively, unless forced."""

import torch

from seglab.config import Config
from seglab.engine import run_setup


def _config(amp: bool, amp_dtype: str) -> Config:
    cfg = Config()
    cfg.train.amp = amp
    cfg.train.amp_dtype = amp_dtype
    return cfg


def test_auto_amp_is_off_on_a_cpu_without_native_bf16(monkeypatch, capsys):
    monkeypatch.setattr(run_setup, "cpu_has_bf16", lambda: False)
    cpu = torch.device("cpu")
    assert run_setup.amp_enabled(_config(True, "auto"), cpu) is False
    notice = capsys.readouterr().err.strip().splitlines()
    assert len(notice) == 1 and "train.amp_dtype: bfloat16" in notice[0]
    # An explicit dtype is the user's choice, and amp off stays off without a word.
    assert run_setup.amp_enabled(_config(True, "bfloat16"), cpu) is True
    assert run_setup.amp_enabled(_config(False, "auto"), cpu) is False
    assert capsys.readouterr().err == ""


def test_auto_amp_stays_on_where_bf16_is_native_or_on_a_gpu(monkeypatch):
    monkeypatch.setattr(run_setup, "cpu_has_bf16", lambda: True)
    assert run_setup.amp_enabled(_config(True, "auto"), torch.device("cpu")) is True
    monkeypatch.setattr(run_setup, "cpu_has_bf16", lambda: False)
    assert run_setup.amp_enabled(_config(True, "auto"), torch.device("cuda")) is True
