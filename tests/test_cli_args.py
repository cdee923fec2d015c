import os

from jaxviz.cli_args import make_out_dir, missing_folders, remove_if_empty


def test_remove_if_empty_removes_only_the_empty_folders_a_run_made(tmp_path):
    """--out a/b/c with a/ there: b and c (and c's empty subfolders) go after a failure; a,
    which was there, stays, and so does a made folder holding anything."""
    (tmp_path / "a").mkdir()
    out = tmp_path / "a" / "b" / "c"
    made = missing_folders(str(out))
    assert made == [str(out), str(out.parent)]
    make_out_dir(str(out))
    (out / "layer" / "chunks").mkdir(parents=True)
    remove_if_empty(made)
    assert os.listdir(tmp_path) == ["a"] and os.listdir(tmp_path / "a") == []

    made = missing_folders(str(out))
    make_out_dir(str(out))
    (out.parent / "theirs.txt").write_text("")  # another's file in b: b stays, c goes
    remove_if_empty(made)
    assert os.listdir(tmp_path / "a" / "b") == ["theirs.txt"]
    remove_if_empty([])  # nothing made: nothing removed
    assert missing_folders(str(tmp_path / "a")) == [] and os.path.isdir(tmp_path / "a")
