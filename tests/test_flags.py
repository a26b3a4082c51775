"""Flags come from the config dataclasses (shards.flags): every field of every command's config is
a flag whose help is its docstring's first sentence and whose default is the field's; a flag not
given leaves the file's or the preset's value alone; bad values are one line and exit 2."""
from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path

import pytest
import yaml

from cluster.cli import main as iipa
from shards.console import Parser
from shards.flags import SKIP, ConfigFlags, Flag, field_docs


@dataclass
class Inner:
    """A section."""

    size: int = 256
    """Shorter side. Only this sentence shows in --help."""
    names: tuple[str, ...] = ("a", "b")
    """Names, comma-separated."""


@dataclass
class Outer:
    """A config with a section and one of each kind of field."""

    out: Path
    """Where it goes."""
    weights: tuple[float, float] = (0.7, 0.3)
    """Two weights (e.g. 0.7,0.3), 100% of them."""
    roots: tuple[Path, ...] = ()
    """Folders, one flag each."""
    fast: bool = True
    """Go fast."""
    limit: int | None = None
    """A cap; None for none."""
    knob: float = 1.0
    """A test knob."""
    inner: Inner = field(default_factory=Inner)
    """The section."""


def parse(flags: ConfigFlags, *argv: str):
    return flags.add_to(Parser(prog="t")).parse_args(list(argv))


def test_field_docs_are_the_strings_under_each_field():
    docs = field_docs(Outer)
    assert docs["weights"] == "Two weights (e.g. 0.7,0.3), 100% of them."
    assert docs["inner"] == "The section."
    assert set(docs) == {f.name for f in fields(Outer)}


def test_flags_parse_each_kind_and_leave_what_is_not_given_alone():
    flags = ConfigFlags(Outer, {"knob": SKIP, "inner.size": Flag(name="inner_size")})
    args = parse(flags, "--out", "o", "--weights", "0.5, 0.5", "--roots", "a,b", "--roots", "c", "--no-fast",
                 "--names", "x,y,z", "--inner-size", "64")
    config = flags.build(args)
    assert config == Outer(Path("o"), (0.5, 0.5), (Path("a,b"), Path("c")), False, None, 1.0,
                           Inner(64, ("x", "y", "z")))
    base = Outer(Path("base"), limit=5, inner=Inner(size=32))
    config = flags.build(parse(flags, "--out", "o", "--names", "q"), base=base)
    assert (config.out, config.limit, config.inner) == (Path("o"), 5, Inner(32, ("q",)))
    assert base.inner.names == ("a", "b")  # the base is not changed


def test_defaults_rank_below_the_flags_given():
    flags = ConfigFlags(Outer)
    config = flags.build(parse(flags, "--out", "o", "--limit", "3"), limit=7, knob=2.0)
    assert (config.limit, config.knob) == (3, 2.0)


def test_help_is_the_first_sentence_with_the_default():
    text = ConfigFlags(Outer, {"knob": SKIP}).add_to(Parser(prog="t")).format_help()
    flat = " ".join(text.split())
    assert "--inner-size" not in flat and "--size SIZE Shorter side. (default 256)" in flat
    assert "Only this sentence" not in flat
    assert "Two weights (e.g. 0.7,0.3), 100% of them. (default 0.7,0.3)" in flat
    assert "--fast, --no-fast Go fast. (default on)" in flat
    assert "--knob" not in flat and "--out OUT Where it goes." in flat


def test_two_fields_on_one_flag_are_refused_where_the_parser_is_made():
    @dataclass
    class Clash:
        size: int = 1
        """Outer size."""
        inner: Inner = field(default_factory=Inner)

    with pytest.raises(TypeError, match="--size"):
        ConfigFlags(Clash)
    ConfigFlags(Clash, {"inner.size": Flag(name="inner_size")})


@pytest.mark.parametrize("argv, message", [(["--weights", "1"], "--weights: takes 2 comma-separated numbers"),
                                           (["--weights", "1,x"], "--weights: takes 2 comma-separated numbers"),
                                           (["--limit", "many"], "--limit: invalid int value")])
def test_a_bad_value_is_one_line_and_exit_2(argv, message, capsys):
    with pytest.raises(SystemExit) as stop:
        parse(ConfigFlags(Outer), "--out", "o", *argv)
    assert stop.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err


# Every command's config and the fields its command line leaves off on purpose.
def command_configs():
    from cluster.config import DemoConfig
    from cluster.launch import LaunchConfig
    from eval.config import EvalConfig, ScoreConfig
    from ingest.archive import ArchiveConfig
    from ingest.search import SearchConfig
    from ingest.synthetic import SyntheticConfig
    from ingest.trends import TrendsConfig
    from shards import BuildConfig
    from shards.pairs import PairsConfig
    from shards.rebuild import RebuildConfig
    from train.config import TrainConfig

    test_knobs = {"wait_scale", "missing_reset_wait_s"}
    return [(["train"], TrainConfig, set()), (["eval"], EvalConfig, set()), (["score"], ScoreConfig, {"inputs"}),
            (["pairs", "build"], PairsConfig, set()), (["shards", "build"], BuildConfig, set()),
            (["shards", "rebuild"], RebuildConfig, {"shards", "resize.size"}), (["demo"], DemoConfig, set()),
            (["ingest", "archive"], ArchiveConfig, {"paths"}), (["ingest", "search"], SearchConfig, test_knobs),
            (["ingest", "trends"], TrendsConfig, test_knobs), (["ingest", "synthetic"], SyntheticConfig, set()),
            (["launch", "train"], LaunchConfig, {"train_args"})]


def leaf_docs(cls, prefix=""):
    """(dotted path, first words of its docstring) of every field that is not a section."""
    from dataclasses import is_dataclass
    from typing import get_type_hints

    hints, docs = get_type_hints(cls), field_docs(cls)
    for f in fields(cls):
        kind = hints[f.name]
        if is_dataclass(kind):
            yield from leaf_docs(kind, f"{prefix}{f.name}.")
        else:
            yield f"{prefix}{f.name}", " ".join(docs[f.name].split()[:4])


@pytest.mark.parametrize("command, cls, off", command_configs(), ids=lambda v: " ".join(v) if isinstance(v, list) else "")
def test_every_field_of_every_command_is_a_flag_with_its_docstring(command, cls, off, capsys):
    with pytest.raises(SystemExit):
        iipa([*command, "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    missing = [path for path, words in leaf_docs(cls) if path not in off and words not in help_text]
    assert not missing, f"iipa {' '.join(command)} --help lacks the fields {missing}"


def test_train_flags_beat_the_config_file_which_beats_the_defaults(tmp_path):
    from train.cli import build_parser, read_config_file, resolve_config

    file = tmp_path / "train.yaml"
    file.write_text("run: {batch_pairs: 8, seed: 4}\ndata: {mean: [0.5, 0.5, 0.5]}\n")
    args = build_parser().parse_args(["--config", str(file), "--seed", "9", "--std", "1,1,1", "--out", "r"])
    config = resolve_config(args, files=False)
    assert (config.run.batch_pairs, config.run.seed, config.run.out) == (8, 9, Path("r"))
    assert (config.data.mean, config.data.std) == ((0.5, 0.5, 0.5), (1.0, 1.0, 1.0))
    assert config.run.epochs == 1 and config.optim.lr_head == 1e-4  # untouched defaults
    # What --nproc-per-node hands its ranks (the resolved config as YAML) reads back the same.
    copy = tmp_path / "resolved.yaml"
    copy.write_text(yaml.safe_dump(config.to_dict()))
    assert read_config_file(copy) == config


def test_pairs_preset_thresholds_apply_unless_a_flag_is_given():
    from shards.pairs.cli import pairs_config, pairs_parser

    def config(*argv):
        return pairs_config(pairs_parser("t").parse_args(["build", "--images", "i", "--out", "o", *argv]))

    ding = config("--preset", "ding")
    assert (ding.min_likes, ding.single_photo, ding.max_caption_words) == (50, True, 6)
    mine = config("--preset", "ding", "--min-likes", "5", "--no-single-photo")
    assert (mine.min_likes, mine.single_photo, mine.max_caption_words) == (5, False, 6)
    assert config().min_likes == 0 and config().weights == (0.7, 0.3)
    assert config("--max-pairs-per-user", "0").max_pairs_per_user is None


def test_a_parse_error_of_a_flags_own_parser_is_the_commands_one_line(tmp_path, capsys):
    assert iipa(["ingest", "archive", str(tmp_path / "a.csv"), "--out", str(tmp_path / "o"), "--set", "nope"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--set: 'nope' is not field=value" in err[0], err
