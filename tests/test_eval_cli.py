"""``facefleet eval``: a wrong ``--data`` folder or family is refused with a message naming the layout."""

from __future__ import annotations

from pathlib import Path

import pytest

from facefleet.bench.accuracy import AFLW_DIR, RECALL_INDEX, eval_cli, layout_problems


def test_wrong_data_folder_names_the_expected_layout(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert eval_cli(["--data", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert str(tmp_path / AFLW_DIR / "index.tsv") in err and "Expected layout" in err
    assert "pt3d_68" in err and str(RECALL_INDEX) in err
    # only what the asked evaluation needs is required
    (tmp_path / RECALL_INDEX).parent.mkdir(parents=True)
    (tmp_path / RECALL_INDEX).write_text("file\tfaces\n")
    assert layout_problems(tmp_path, {"recall"}) == []
    assert layout_problems(tmp_path, {"aflw", "recall"}) == [str(tmp_path / AFLW_DIR / "index.tsv")]


def test_unknown_family_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert eval_cli(["--data", str(tmp_path), "--family", "mediapipe468,nope"]) == 2
    assert "nope" in capsys.readouterr().err
