"""`--overwrite` deletes only folders poodle made (its marker file); anything else is refused, untouched."""

import pytest

from poodle.cli import main
from poodle.output_dir import MARKER, OutputDirError, claim_output_dir, read_marker


def _user_folder(path):
    (path / "sub").mkdir(parents=True)
    (path / "thesis.tex").write_text("years of work")
    (path / "sub" / "data.csv").write_text("1,2,3")
    return path


def test_a_folder_poodle_did_not_make_is_never_deleted(tmp_path):
    folder = _user_folder(tmp_path / "work")
    with pytest.raises(OutputDirError, match=r"refusing to delete .*not made by poodle.*thesis.tex"):
        claim_output_dir(folder, "demo", overwrite=True)
    assert (folder / "thesis.tex").read_text() == "years of work" and (folder / "sub" / "data.csv").is_file()
    with pytest.raises(OutputDirError, match="pass --overwrite"):
        claim_output_dir(folder, "demo")


def test_only_the_same_kind_of_poodle_output_is_replaced(tmp_path):
    out = claim_output_dir(tmp_path / "run", "demo")
    assert read_marker(out)["kind"] == "demo" and (out / MARKER).is_file()
    (out / "old_result.json").write_text("{}")
    with pytest.raises(OutputDirError, match="a poodle demo output"):
        claim_output_dir(out, "study", overwrite=True)  # a demo folder is not a study's to delete
    assert (out / "old_result.json").is_file()
    claim_output_dir(out, "demo", overwrite=True)
    assert not (out / "old_result.json").exists() and read_marker(out)["kind"] == "demo"


def test_a_file_in_the_way_and_an_empty_folder(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(OutputDirError, match="not a folder"):
        claim_output_dir(tmp_path / "f", "demo", overwrite=True)
    (tmp_path / "empty").mkdir()
    assert read_marker(claim_output_dir(tmp_path / "empty", "demo"))["kind"] == "demo"


def test_demo_overwrite_refuses_a_user_folder_in_one_line(tmp_path, capsys):
    folder = _user_folder(tmp_path / "home")
    assert main(["demo", "--out", str(folder), "--overwrite", "--quick"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "refusing to delete" in err and "thesis.tex" in err
    assert (folder / "thesis.tex").read_text() == "years of work"
