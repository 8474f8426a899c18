"""resolve_device: the one place a user's device setting becomes a torch device."""

import pytest
import torch

from seglab.device import resolve_device
from seglab.errors import SeglabError


def test_auto_follows_what_torch_sees():
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto").type == expected
    assert resolve_device("cpu") == torch.device("cpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the machine without a GPU")
def test_cuda_without_a_gpu_names_the_option():
    with pytest.raises(SeglabError, match=r"train\.device=cuda, but torch sees no CUDA device"):
        resolve_device("cuda", 0, "train.device")


def test_unknown_device_name_is_a_user_error():
    with pytest.raises(SeglabError, match=r"--device=gpu0 is not a device"):
        resolve_device("gpu0", option="--device")
