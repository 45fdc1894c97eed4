import torch

from mammodetr.training.precision import fp32_math


def _flags():
    return torch.backends.cuda.matmul.fp32_precision, torch.backends.cudnn.conv.fp32_precision


def test_tf32_is_set_for_cuda_only_and_restored():
    before = _flags()
    with fp32_math(torch.device("cpu"), tf32=True):
        assert _flags() == before
    with fp32_math(torch.device("cuda"), tf32=False):
        assert _flags() == before
    try:
        with fp32_math(torch.device("cuda"), tf32=True):
            assert _flags() == ("tf32", "tf32")
            raise KeyboardInterrupt  # restored on any exit
    except KeyboardInterrupt:
        pass
    assert _flags() == before
