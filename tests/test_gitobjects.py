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
    commit_stream,
    diff_changes,
    ident,
    object_id,
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


def test_a_commit_stream_gives_exactly_the_intended_change(tmp_path: Path) -> None:
    work = tmp_path / "w"
    git("init", "-q", str(work), cwd=tmp_path)
    (work / "a").mkdir()
    (work / "a" / "v.yaml").write_text("tag: '1'\n")
    (work / "other.yaml").write_text("x: 1\n")
    git("add", "-A", cwd=work)
    git("-c", "user.name=x", "-c", "user.email=x@x", "commit", "-qm", "init", cwd=work)
    parent = git("rev-parse", "HEAD", cwd=work).decode().strip()
    new = Blob("a/v.yaml", b"tag: '2'\n")
    stream = commit_stream("refs/heads/next", parent, [new], "ci: bump\n\n\nDeployment-Id: d\n",
                           ("Bot <b>", "bot@example.com"), ("Bot", "bot@example.com"), "1700000000 +0000")
    git("fast-import", "--quiet", "--done", cwd=work, data=stream)
    raw = git("diff-tree", "-r", "-z", "--raw", parent, "refs/heads/next", cwd=work)
    assert diff_changes(raw) == {"a/v.yaml": ("100644", object_id("blob", new.data, parent))}
    log = git("log", "-1", "--format=%an <%ae>|%B", "refs/heads/next", cwd=work).decode()
    assert log == "Bot b <bot@example.com>|ci: bump\n\nDeployment-Id: d\n\n"
