"""The trainer's configuration: one dataclass per section, every field documented.

Command line beats YAML file beats these defaults; each component receives only its section.
The defaults are IIPA's recipe (Adam, weight decay 1e-4, lr 1e-5 backbone / 1e-4 head, × 0.95
per epoch, 64 pairs per GPU, shorter side 256, crop 224).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

# The torchvision ResNets a run may use; here, not in train.model, so the CLI lists them without torch.
ARCHS = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152")
# Names the options may take (which backends a machine offers is train.decode.BACKENDS).
BACKEND_NAMES = ("auto", "torch", "dali", "nvjpeg")
DECODE_DEVICES = ("auto", "mixed", "cpu")
PRECISIONS = ("auto", "bf16", "fp32")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class DataConfig:
    """Where pairs come from and how images become tensors."""

    shards: Path = Path("shards")
    """Shards folder (tars, Parquet slices, manifest.json)."""
    pairs: Path = Path("pairs")
    """Pairs folder with train.parquet and val.parquet."""
    backend: str = "auto"
    """Decoding backend: auto, dali, nvjpeg, torch (see train.decode.BACKENDS)."""
    decode_device: str = "auto"
    """Where DALI decodes: auto (mixed on a GPU, cpu otherwise), mixed, or cpu."""
    resize: int = 256
    """Shorter side after resizing."""
    crop: int = 224
    """Side of the square crop fed to the model (random in training, centred in evaluation)."""
    squash: bool = False
    """Resize straight to crop×crop, ignoring the aspect ratio (IIPA's released test script)."""
    mean: tuple[float, float, float] = IMAGENET_MEAN
    """Per-channel mean subtracted after scaling to [0, 1]."""
    std: tuple[float, float, float] = IMAGENET_STD
    """Per-channel standard deviation divided by."""
    shuffle_shards: int = 4
    """Pairs of this many consecutive shards are shuffled together (the cross-shard buffer)."""
    prefetch: int = 2
    """Batches decoded ahead of the training step."""
    threads: int = 2
    """Decoding threads per rank."""


@dataclass
class OptimConfig:
    """The optimiser and schedule (IIPA's recipe)."""

    lr_backbone: float = 1e-5
    """Learning rate of the convolutional backbone."""
    lr_head: float = 1e-4
    """Learning rate of the final Linear(…, 1)."""
    weight_decay: float = 1e-4
    """Adam weight decay."""
    lr_decay: float = 0.95
    """Learning rates are multiplied by this after every epoch."""


@dataclass
class ModelConfig:
    """The scoring network."""

    arch: str = "resnet50"
    """torchvision ResNet: resnet18, resnet34, resnet50, resnet101, resnet152."""
    init: str = "random"
    """random, imagenet:PATH, iipa:PATH, or an earlier RUN folder."""


@dataclass
class RunConfig:
    """The job: length, checkpoints, validation, precision."""

    out: Path = Path("run")
    """Run folder: model.pth, model.json, state.pt, metrics.jsonl, val_curve.{csv,png}."""
    epochs: int = 1
    """Passes over the training pairs."""
    max_steps: int | None = None
    """Stop after this many steps in all (None: run every epoch)."""
    batch_pairs: int = 64
    """Pairs per step per rank."""
    val_every: int = 100
    """Validate every this many steps (and at the end)."""
    ckpt_every: int = 200
    """Checkpoint every this many steps (and at the end)."""
    log_every: int = 10
    """Write training metrics every this many steps."""
    seed: int = 0
    """Seed of the data order, swaps and initialisation."""
    precision: str = "auto"
    """auto (bf16 autocast on a GPU, fp32 on the CPU), bf16, or fp32."""
    compile: bool = False
    """Wrap the model in torch.compile."""
    max_bad_steps: int = 10
    """Stop after this many non-finite losses (each such step is skipped)."""
    audit: bool = False
    """Write RUN/audit/rank-R.jsonl: pair ids per step and a final parameter digest."""


KINDS = {"int": (int,), "float": (int, float), "str": (str,), "bool": (bool,), "Path": (str,)}


def typed(name: str, value, annotation: str):
    """A YAML value as its field's type (`annotation`, e.g. "int | None"), or a ValueError naming it."""
    kind, optional = annotation.split(" | ")[0], "None" in annotation
    if value is None and optional:
        return None
    if kind.startswith("tuple"):
        n = kind.count(",") + 1
        if not isinstance(value, (list, tuple)) or len(value) != n or not all(
                isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
            raise ValueError(f"{name}: expected a list of {n} numbers, got {value!r}")
        return tuple(float(v) for v in value)
    if not isinstance(value, KINDS[kind]) or (isinstance(value, bool) and kind != "bool"):
        raise ValueError(f"{name}: expected {'a path' if kind == 'Path' else kind}, got {value!r}")
    return Path(value) if kind == "Path" else float(value) if kind == "float" else value


@dataclass
class TrainConfig:
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    run: RunConfig = field(default_factory=RunConfig)

    def to_dict(self) -> dict:
        """The config as plain YAML/JSON values (paths as strings, tuples as lists): what from_dict reads."""
        def plain(v):
            return str(v) if isinstance(v, Path) else list(v) if isinstance(v, tuple) else v

        return {k: {n: plain(v) for n, v in asdict(getattr(self, k)).items()} for k in ("data", "optim", "model", "run")}

    @classmethod
    def from_dict(cls, raw: dict) -> "TrainConfig":
        """Build from nested dicts (a YAML file), rejecting unknown keys by name."""
        sections = {}
        for f in fields(cls):
            section_cls = type(getattr(cls(), f.name))
            given = raw.get(f.name) or {}
            if not isinstance(given, dict):
                raise ValueError(f"[{f.name}] must be a mapping of options, got {given!r}")
            values = dict(given)
            known = {x.name: x for x in fields(section_cls)}
            unknown = set(values) - set(known)
            if unknown:
                raise ValueError(f"unknown option(s) in [{f.name}]: {', '.join(sorted(unknown))}")
            for name, value in values.items():
                values[name] = typed(f"[{f.name}] {name}", value, known[name].type)
            sections[f.name] = section_cls(**values)
        extra = set(raw) - set(sections)
        if extra:
            raise ValueError(f"unknown section(s): {', '.join(sorted(extra))}")
        return cls(**sections)
