from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from bridge.errors import PermanentError
from workers.gitobjects import (
    Blob,
    batch_objects,
    check_path,
    clean_message,
    commit_object,
    diff_changes,
    ident,
    loose_object,
    object_id,
    replaced_trees,
    tree_dirs,
    tree_modes,
)


@pytest.mark.parametrize("path", ["values.yaml", "apps/a/values.yaml", "a b/c.yaml", "ünï/v.yaml", ".github/x.yaml"])
def test_paths_inside_the_repository(path: str) -> None:
    assert check_path(path) == path


@pytest.mark.parametrize("path", ["", "/etc/passwd", "../x.yaml", "a/../../x.yaml", "a//b.yaml", "./a.yaml",
                                  ".git/config", "a/.GIT/x", "a\\b.yaml", "a\nb.yaml", '"quoted".yaml', "a/"])
def test_paths_refused(path: str) -> None:
    with pytest.raises(PermanentError):
        check_path(path)


@pytest.mark.parametrize(("message", "cleaned"), [
    ("subject\n", "subject\n"),
    ("subject", "subject\n"),
    ("\n\nsubject  \n\n\n\nbody\t\n\n", "subject\n\nbody\n"),
    ("", ""),
    ("\n \n", ""),
])
def test_messages_are_cleaned_like_git_commit(message: str, cleaned: str) -> None:
    assert clean_message(message) == cleaned


def test_ident_drops_what_would_break_a_header() -> None:
    assert ident(" Bot <x>\n") == "Bot x"


def git(*args: str, cwd: Path, data: bytes | None = None) -> bytes:
    return subprocess.run(["git", *args], cwd=cwd, input=data, capture_output=True, check=True).stdout


def test_object_ids_trees_and_batch_answers_match_git(tmp_path: Path) -> None:
    git("init", "-q", "--bare", str(tmp_path / "r.git"), cwd=tmp_path)
    repo = tmp_path / "r.git"
    blob = b"image:\n  tag: '1'\n"
    sha = git("hash-object", "-w", "--stdin", cwd=repo, data=blob).decode().strip()
    assert object_id("blob", blob, sha) == sha
    tree = git("mktree", cwd=repo, data=f"100644 blob {sha}\tvalues.yaml\n100755 blob {sha}\trun.sh\n"
                                        f"120000 blob {sha}\tlink\n".encode()).decode().strip()
    out = git("cat-file", "--batch", cwd=repo, data=f"{tree}\n{'0' * 40}\n{sha}\n".encode())
    objects = batch_objects(out, 3)
    assert objects[1] is None and objects[2] == (sha, "blob", blob)
    assert objects[0] is not None and objects[0][1] == "tree"
    assert tree_modes(objects[0][2], 20) == {"values.yaml": "100644", "run.sh": "100755", "link": "120000"}


def test_tree_dirs_are_every_directory_deepest_first() -> None:
    assert tree_dirs(["top.yaml"]) == [""]
    assert tree_dirs(["a/b/c.yaml", "a/v.yaml", "x/y.yaml"]) == ["a/b", "a", "x", ""]


def test_new_objects_give_exactly_the_intended_change(tmp_path: Path) -> None:
    """The trees, blobs and commit written as loose objects are what git reads back: fsck --strict finds nothing
    wrong, diff-tree shows exactly the edit, the message and identities are as `git commit` would write them."""
    work = tmp_path / "w"
    git("init", "-q", str(work), cwd=tmp_path)
    files = {"a/v.yaml": "tag: '1'\n", "a/b/deep.yaml": "x: 1\n", "a-b.yaml": "y: 1\n", "a.yaml": "z: 1\n",
             "other.yaml": "x: 1\n"}
    for name, text in files.items():
        (work / name).parent.mkdir(parents=True, exist_ok=True)
        (work / name).write_text(text)
    git("add", "-A", cwd=work)
    git("-c", "user.name=x", "-c", "user.email=x@x", "commit", "-qm", "init", cwd=work)
    parent = git("rev-parse", "HEAD", cwd=work).decode().strip()
    new = [Blob("a/v.yaml", b"tag: '2'\n"), Blob("a/b/deep.yaml", b"x: 2\n", "100755")]
    dirs = tree_dirs(b.path for b in new)
    out = git("cat-file", "--batch", cwd=work, data="".join(f"{parent}:{d}\n" for d in dirs).encode())
    trees = {d: (obj[0], obj[2]) for d, obj in zip(dirs, batch_objects(out, len(dirs)), strict=True) if obj}
    root, written = replaced_trees(trees, new)
    commit = commit_object(root, parent, "ci: bump\n\n\nDeployment-Id: d\n", ("Bot <b>", "bot@example.com"),
                           ("Bot", "bot@example.com"), "1700000000 +0000")
    objects = [("blob", b.data) for b in new] + [("tree", raw) for raw in written.values()] + [("commit", commit)]
    for kind, data in objects:
        oid = object_id(kind, data, parent)
        (work / ".git" / "objects" / oid[:2]).mkdir(exist_ok=True)
        (work / ".git" / "objects" / oid[:2] / oid[2:]).write_bytes(loose_object(kind, data))
    sha = object_id("commit", commit, parent)
    git("update-ref", "refs/heads/next", sha, cwd=work)
    git("fsck", "--strict", "--no-dangling", cwd=work)
    raw = git("diff-tree", "-r", "-z", "--raw", parent, "refs/heads/next", cwd=work)
    assert diff_changes(raw) == {b.path: (b.mode, object_id("blob", b.data, parent)) for b in new}
    log = git("log", "-1", "--format=%an <%ae>|%cn|%ct|%B", "refs/heads/next", cwd=work).decode()
    assert log == "Bot b <bot@example.com>|Bot|1700000000|ci: bump\n\nDeployment-Id: d\n\n"


def test_only_files_of_the_parent_are_replaced() -> None:
    tree = b"100644 v.yaml\0" + bytes(20)
    with pytest.raises(ValueError, match="new.yaml"):
        replaced_trees({"": ("0" * 40, tree)}, [Blob("new.yaml", b"x")])


