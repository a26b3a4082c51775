"""atomic_path: a failed write leaves the old file and no temporary; a good one replaces it."""
import pytest

from shards.atomic import atomic_path


def test_a_failed_write_leaves_the_target_untouched_and_no_temporary(tmp_path):
    target = tmp_path / "out.json"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("boom")
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.json"]


def test_a_good_write_replaces_the_target_and_makes_the_folder(tmp_path):
    target = tmp_path / "new" / "out.json"
    with atomic_path(target, tag="7") as tmp:
        assert tmp.name == ".out.json.7.tmp" and not target.exists()
        tmp.write_text("new")
    assert target.read_text() == "new"
    assert sorted(p.name for p in target.parent.iterdir()) == ["out.json"]
