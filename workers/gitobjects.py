"""Git's object formats, as the writer needs them (pure): paths, ids, trees, messages, fast-import and diff output.

    check_path(file)            a repository-relative path we may write, or PermanentError
    batch_objects(out)          the objects of a `git cat-file --batch` answer, in order (None: missing)
    tree_modes(data, id_size)   name → mode of a raw tree object
    commit_stream(...)          the `git fast-import` input for one commit replacing some files
    diff_changes(raw)           path → (new mode, new id) from `git diff-tree -r -z --raw`
"""

from __future__ import annotations

import hashlib
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass

from bridge.errors import PermanentError

REGULAR_MODES = ("100644", "100755")


@dataclass(frozen=True)
class Blob:
    """A regular file in a commit (or the new content to write at `path`)."""

    path: str
    data: bytes
    mode: str = "100644"


def check_path(file: str) -> str:
    """A repository-relative path of a file we may write: no `..`, no absolute path, nothing inside `.git`."""
    parts = file.split("/")
    if (not file or file.startswith("/") or "\\" in file or any(c in file for c in "\n\r\0")
            or file.startswith('"') or any(p in ("", ".", "..") or p.lower() == ".git" for p in parts)):
        raise PermanentError(f"{file}: not a path inside the repository")
    return file


def object_id(kind: str, data: bytes, like: str) -> str:
    """The id git gives an object (SHA-1, or SHA-256 when `like` is a 64-digit id)."""
    digest = hashlib.sha256 if len(like) == 64 else hashlib.sha1
    return digest(f"{kind} {len(data)}\0".encode() + data).hexdigest()


def clean_message(message: str) -> str:
    """What `git commit --cleanup=whitespace` keeps: no trailing blanks, no leading/trailing/doubled empty lines."""
    out: list[str] = []
    for line in (line.rstrip() for line in message.splitlines()):
        if line or (out and out[-1]):
            out.append(line)
    while out and not out[-1]:
        out.pop()
    return "\n".join(out) + "\n" if out else ""


def batch_objects(out: bytes, count: int) -> list[tuple[str, str, bytes] | None]:
    """(id, type, content) of the first `count` answers of `git cat-file --batch`; None for a missing object."""
    found: list[tuple[str, str, bytes] | None] = []
    pos = 0
    for _ in range(count):
        end = out.index(b"\n", pos)
        header = out[pos:end].decode(errors="replace").split(" ")
        pos = end + 1
        if len(header) != 3 or not header[2].isdigit():  # "<name> missing" / "<name> ambiguous"
            found.append(None)
            continue
        size = int(header[2])
        found.append((header[0], header[1], out[pos:pos + size]))
        pos += size + 1
    return found


def tree_modes(data: bytes, id_size: int) -> dict[str, str]:
    """name → mode of a raw tree object whose entries carry `id_size`-byte object ids."""
    modes: dict[str, str] = {}
    i, size = 0, len(data)
    while i < size:
        space = data.index(b" ", i)
        nul = data.index(b"\0", space)
        modes[data[space + 1:nul].decode("utf-8", "surrogateescape")] = data[i:space].decode().zfill(6)
        i = nul + 1 + id_size
    return modes


def ident(name: str) -> str:
    """A name or e-mail address as a commit header may carry it."""
    return re.sub(r"[<>\n\r\0]", "", name).strip()


def git_time(now: float) -> str:
    """`<seconds> <+hhmm>` in the local time zone, as `git commit` stamps its commits."""
    offset = time.localtime(now).tm_gmtoff // 60
    return f"{int(now)} {'-' if offset < 0 else '+'}{abs(offset) // 60:02d}{abs(offset) % 60:02d}"


def commit_stream(ref: str, parent: str, blobs: Sequence[Blob], message: str, author: tuple[str, str],
                  committer: tuple[str, str], when: str) -> bytes:
    """`git fast-import` input: one commit (mark :1) on top of `parent` that replaces `blobs`, then `done`."""
    text = clean_message(message).encode()
    parts = [f"commit {ref}\nmark :1\nauthor {ident(author[0])} <{ident(author[1])}> {when}\n"
             f"committer {ident(committer[0])} <{ident(committer[1])}> {when}\n".encode(),
             b"data %d\n" % len(text), text, f"from {parent}\n".encode()]
    for blob in blobs:
        parts += [f"M {blob.mode} inline {check_path(blob.path)}\n".encode(), b"data %d\n" % len(blob.data),
                  blob.data, b"\n"]
    parts.append(b"\ndone\n")
    return b"".join(parts)


def diff_changes(raw: bytes) -> dict[str, tuple[str, str]]:
    """path → (new mode, new id) of every entry of `git diff-tree -r -z --raw` output."""
    fields = raw.decode(errors="surrogateescape").split("\0")
    return {fields[i + 1]: (fields[i].split()[1], fields[i].split()[3]) for i in range(0, len(fields) - 1, 2)}
