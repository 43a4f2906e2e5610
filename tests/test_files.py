"""`s2s.files.atomic_write`: the one way s2s writes a file."""

from __future__ import annotations

import pytest

from s2s.files import atomic_write


def test_atomic_write_replaces_the_file_only_when_the_block_succeeds(tmp_path):
    path = tmp_path / "sub" / "out.txt"
    with atomic_write(path) as tmp:
        assert tmp.parent == path.parent and not path.exists()  # parents made, nothing yet
        tmp.write_text("first", encoding="utf-8")
    assert path.read_text(encoding="utf-8") == "first"
    with pytest.raises(RuntimeError), atomic_write(path) as tmp:
        tmp.write_text("half", encoding="utf-8")
        raise RuntimeError("killed mid-write")
    assert path.read_text(encoding="utf-8") == "first"  # the old file stays whole
    assert sorted(p.name for p in path.parent.iterdir()) == ["out.txt"]  # no temporary left
