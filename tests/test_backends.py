"""Decoding backends agree on the same input; those missing here are not offered."""
import numpy as np
import pytest
import torch

from shards.console import UserError
from tests.conftest import jpeg_bytes, photo_arrays
from train.config import DataConfig
from train.decode import BACKENDS, make_decoder

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def encoded():
    from PIL import Image

    out = []
    for array in photo_arrays().values():
        img = Image.fromarray(array)
        out.append(jpeg_bytes(np.asarray(img.resize((img.width * 3 // 4, img.height * 3 // 4)))))
    return out


@pytest.mark.skipif("dali" not in BACKENDS, reason="DALI is not installed")
@pytest.mark.parametrize("squash", [False, True])
def test_dali_cpu_and_pillow_agree_within_tolerance(encoded, squash):
    config = {"resize": 160, "crop": 128, "squash": squash}
    pillow = make_decoder(DataConfig(backend="torch", **config), False, CPU)(encoded, 0)
    dali = make_decoder(DataConfig(backend="dali", decode_device="cpu", **config), False, CPU)(encoded, 0)
    assert pillow.shape == dali.shape == (len(encoded), 3, 128, 128)
    diff = (pillow - dali).abs()
    assert diff.mean() < 0.03 and np.percentile(diff.numpy(), 99) < 0.35
    # normalised with ImageNet statistics: roughly zero mean, unit spread
    assert abs(float(pillow.mean())) < 1.0 and 0.3 < float(pillow.std()) < 2.0


def test_training_mode_crops_flip_and_repeat_with_the_seed(encoded):
    decode = make_decoder(DataConfig(backend="torch", resize=160, crop=128), True, CPU)
    a, b, c = decode(encoded, 1), decode(encoded, 1), decode(encoded, 2)
    assert torch.equal(a, b) and not torch.equal(a, c)
    centre = make_decoder(DataConfig(backend="torch", resize=160, crop=128), False, CPU)(encoded, 1)
    assert not torch.equal(a, centre)


def test_gpu_backend_is_not_offered_without_a_gpu():
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    assert "nvjpeg" not in BACKENDS
    with pytest.raises(UserError, match="not available"):
        make_decoder(DataConfig(backend="nvjpeg"), False, CPU)


@pytest.mark.parametrize("squash", [False, True])
def test_nvjpeg_transforms_agree_with_pillow_on_the_cpu(encoded, squash):
    """The GPU backend's resize, crop and normalisation, run on the CPU with torchvision's CPU
    decoder standing in for nvJPEG: only the decode call differs on a GPU."""
    from train.decode import NvjpegDecoder

    config = DataConfig(resize=160, crop=128, squash=squash)
    pillow = make_decoder(DataConfig(backend="torch", resize=160, crop=128, squash=squash), False, CPU)(encoded, 0)
    nvjpeg = NvjpegDecoder(config, False, CPU)(encoded, 0)
    assert nvjpeg.shape == pillow.shape == (len(encoded), 3, 128, 128) and nvjpeg.device == CPU
    diff = (pillow - nvjpeg).abs()
    assert diff.mean() < 0.03 and np.percentile(diff.numpy(), 99) < 0.35
    train = NvjpegDecoder(config, True, CPU)
    assert torch.equal(train(encoded, 3), train(encoded, 3)) and not torch.equal(train(encoded, 3), train(encoded, 4))
