"""Decoding backends: encoded JPEG bytes in, normalised [N, 3, crop, crop] tensors out.

Every backend takes (config, train, device) and is called with (list of encoded images, seed);
they agree within a stated tolerance on the same input: in evaluation mode, mean absolute
difference under 0.03 and 99th percentile under 0.35 in normalised units (about 2 and 20 grey
levels), the remainder being resampling filters and JPEG decoders (tests/test_backends.py). A backend whose
library or device is missing is simply not offered. Training crops at random and flips; evaluation
takes the centre crop (or, with `squash`, resizes straight to crop×crop as IIPA's script did).
"""
from __future__ import annotations

import io
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
from PIL import Image

from shards.console import UserError
from train.config import DataConfig


class TorchDecoder:
    """Pillow decoding on the CPU (DCT-domain downscaling first), torch normalisation per batch."""

    def __init__(self, config: DataConfig, train: bool, device: torch.device):
        self.config, self.train, self.device = config, train, device
        self.pool = ThreadPoolExecutor(max(1, config.threads))
        self.mean = torch.tensor(config.mean).view(1, 3, 1, 1) * 255
        self.std = torch.tensor(config.std).view(1, 3, 1, 1) * 255

    def _one(self, data: bytes, seed: int) -> np.ndarray:
        c = self.config
        img = Image.open(io.BytesIO(data))
        w, h = img.size
        scale = c.resize / min(w, h)
        size = (c.crop, c.crop) if c.squash else (max(c.crop, round(w * scale)), max(c.crop, round(h * scale)))
        if not c.squash:  # squash reproduces IIPA's script, which resizes from full resolution
            img.draft("RGB", size)  # DCT-domain downscale first where the JPEG is much larger
        img = img.convert("RGB").resize(size, Image.Resampling.BILINEAR)
        if self.train:
            rng = np.random.default_rng(seed)
            x, y = int(rng.integers(0, size[0] - c.crop + 1)), int(rng.integers(0, size[1] - c.crop + 1))
            flip = bool(rng.integers(0, 2))
        else:
            x, y, flip = (size[0] - c.crop) // 2, (size[1] - c.crop) // 2, False
        img = img.crop((x, y, x + c.crop, y + c.crop))
        if flip:
            img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        return np.asarray(img, dtype=np.uint8)

    def __call__(self, encoded: list[bytes], seed: int) -> torch.Tensor:
        seeds = [seed * 1_000_003 + i for i in range(len(encoded))]
        batch = torch.from_numpy(np.stack(list(self.pool.map(self._one, encoded, seeds))))
        # NCHW and contiguous: the layout the model's parameters (and DDP's gradient buckets) expect.
        batch = batch.permute(0, 3, 1, 2).contiguous().float().sub_(self.mean).div_(self.std)
        if self.device.type == "cuda":  # pinned, so the copy is asynchronous and overlaps the step
            return batch.pin_memory().to(self.device, non_blocking=True)
        return batch


class DaliDecoder:
    """NVIDIA DALI fed by `fn.external_source` with encoded bytes: `mixed` decoding on a GPU,
    the same pipeline on the CPU without one."""

    def __init__(self, config: DataConfig, train: bool, device: torch.device):
        from nvidia.dali import fn, pipeline_def, types

        self.config, self.train, self.device = config, train, device
        decode_device = config.decode_device
        if decode_device == "auto":
            decode_device = "mixed" if device.type == "cuda" else "cpu"
        self.max_batch = 1024

        @pipeline_def(batch_size=self.max_batch, num_threads=max(1, config.threads),
                      device_id=device.index or 0 if decode_device == "mixed" else None,
                      exec_dynamic=True, prefetch_queue_depth=1)
        def pipe():
            jpegs = fn.external_source(name="jpegs", dtype=types.UINT8)
            images = fn.decoders.image(jpegs, device=decode_device, output_type=types.RGB)
            if config.squash:
                images = fn.resize(images, resize_x=config.crop, resize_y=config.crop, antialias=True)
            else:
                images = fn.resize(images, resize_shorter=config.resize, antialias=True)
            if train:  # drawn on the host from the step's seed (see __call__): per rank and step, exact on resume
                pos_x = fn.external_source(name="pos_x", dtype=types.FLOAT)
                pos_y = fn.external_source(name="pos_y", dtype=types.FLOAT)
                mirror = fn.external_source(name="mirror", dtype=types.INT32)
            else:
                pos_x = pos_y = 0.5
                mirror = 0
            return fn.crop_mirror_normalize(
                images, crop=(config.crop, config.crop), crop_pos_x=pos_x, crop_pos_y=pos_y, mirror=mirror,
                mean=[m * 255 for m in config.mean], std=[s * 255 for s in config.std],
                dtype=types.FLOAT, output_layout="CHW", out_of_bounds_policy="pad")

        self.pipe = pipe(seed=0)  # no DALI random operator is used; augmentation follows the step's seed
        self.pipe.build()

    def __call__(self, encoded: list[bytes], seed: int) -> torch.Tensor:
        arrays = [np.frombuffer(b, dtype=np.uint8) for b in encoded]
        rng = np.random.default_rng(seed)
        positions = rng.random((len(arrays), 2), dtype=np.float32)
        mirrors = rng.integers(0, 2, len(arrays), dtype=np.int32)
        out = []
        for start in range(0, len(arrays), self.max_batch):
            part = slice(start, start + self.max_batch)
            self.pipe.feed_input("jpegs", arrays[part])
            if self.train:
                self.pipe.feed_input("pos_x", list(positions[part, 0]))
                self.pipe.feed_input("pos_y", list(positions[part, 1]))
                self.pipe.feed_input("mirror", list(mirrors[part]))
            (images,) = self.pipe.run()
            batch = images.as_tensor()  # every image is crop×crop now: one dense tensor
            if self.device.type == "cuda":
                from nvidia.dali.plugin.pytorch import feed_ndarray

                target = torch.empty(batch.shape(), dtype=torch.float32, device=self.device)
                feed_ndarray(batch, target, cuda_stream=torch.cuda.current_stream(self.device))
                out.append(target)
            else:
                out.append(torch.from_numpy(np.array(batch)))
        return torch.cat(out)


class NvjpegDecoder:
    """torchvision's GPU JPEG decoder (nvJPEG) with resize, crop, flip and normalisation on the
    GPU: the GPU path for machines where DALI is not installed. Everything but the decode call is
    device-agnostic, and on a CPU device torchvision's CPU `decode_jpeg` stands in for nvJPEG, so
    the tests run this very code without a GPU (users are offered it only on one: BACKENDS)."""

    def __init__(self, config: DataConfig, train: bool, device: torch.device):
        self.config, self.train, self.device = config, train, device
        self.mean = torch.tensor(config.mean, device=device).view(1, 3, 1, 1) * 255
        self.std = torch.tensor(config.std, device=device).view(1, 3, 1, 1) * 255

    def _resized(self, img: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
        c = self.config
        h, w = img.shape[-2:]
        scale = c.resize / min(h, w)
        size = (c.crop, c.crop) if c.squash else (max(c.crop, round(h * scale)), max(c.crop, round(w * scale)))
        img = torch.nn.functional.interpolate(img[None].float(), size=size, mode="bilinear", antialias=True)[0]
        if self.train:
            y, x = int(rng.integers(0, size[0] - c.crop + 1)), int(rng.integers(0, size[1] - c.crop + 1))
        else:
            y, x = (size[0] - c.crop) // 2, (size[1] - c.crop) // 2
        img = img[:, y:y + c.crop, x:x + c.crop]
        return img.flip(-1) if self.train and rng.integers(0, 2) else img

    def __call__(self, encoded: list[bytes], seed: int) -> torch.Tensor:
        import torchvision.io as tio

        data = [torch.frombuffer(bytearray(b), dtype=torch.uint8) for b in encoded]
        images = tio.decode_jpeg(data, mode=tio.ImageReadMode.RGB, device=self.device)
        rng = np.random.default_rng(seed)
        batch = torch.stack([self._resized(img, rng) for img in images])
        return (batch - self.mean) / self.std


def _dali_available() -> bool:
    try:
        import nvidia.dali  # noqa: F401
    except ImportError:
        return False
    return True


# name → backend, for the backends whose library and device are present here.
BACKENDS = {"torch": TorchDecoder}
if _dali_available():
    BACKENDS["dali"] = DaliDecoder
if torch.cuda.is_available():
    BACKENDS["nvjpeg"] = NvjpegDecoder


def auto_backend(device: torch.device) -> str:
    """On a GPU: DALI, else torchvision's nvJPEG decoder; on the CPU: Pillow."""
    if device.type == "cuda":
        return "dali" if "dali" in BACKENDS else "nvjpeg"
    return "torch"


def make_decoder(config: DataConfig, train: bool, device: torch.device):
    """The configured backend (see BACKENDS and auto_backend)."""
    name = auto_backend(device) if config.backend == "auto" else config.backend
    if name not in BACKENDS:
        raise UserError(f"--backend {name}: not available here; choose from {', '.join(BACKENDS)} or auto")
    return BACKENDS[name](config, train, device)


