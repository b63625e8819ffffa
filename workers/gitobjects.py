"""Git's object formats, as the writer needs them (pure): paths, ids, trees, commits, loose objects and diff output.

    check_path(file)            a repository-relative path we may write, or PermanentError
    batch_objects(out)          the objects of a `git cat-file --batch` answer, in order (None: missing)
    tree_modes(data, id_size)   name → mode of a raw tree object
    tree_dirs(files)            the directories whose trees change when `files` do, deepest first
    replaced_trees(...)         the new trees of one commit replacing some files, and its root tree
    commit_object(...)          the raw commit object
    loose_object(kind, data)    an object as git stores it loose (zlib of header and content)
    trailer_values(message, key) the values of `key:` trailers of a message the bridge wrote
    diff_changes(raw)           path → (new mode, new id) from `git diff-tree -r -z --raw`
"""

from __future__ import annotations

import hashlib
import re
import time
import zlib
from collections.abc import Iterable, Mapping, Sequence
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


def tree_dirs(files: Iterable[str]) -> list[str]:
    """Every directory from the root ("") to each file's own, deepest first (each directory's tree is rewritten
    before its parent's)."""
    dirs = {""}
    for file in files:
        parts = file.split("/")[:-1]
        dirs.update("/".join(parts[:i]) for i in range(1, len(parts) + 1))
    return sorted(dirs, key=lambda d: (-(d.count("/") + 1 if d else 0), d))


def _replace_entries(data: bytes, changes: Mapping[str, tuple[str, str]], id_size: int) -> bytes:
    """A raw tree with the entries named in `changes` (name → (mode, hex id)) given their new mode and id. Each must
    exist already: names, order and every other entry stay byte for byte."""
    out, i, found = bytearray(), 0, 0
    while i < len(data):
        space = data.index(b" ", i)
        nul = data.index(b"\0", space)
        name = data[space + 1:nul].decode("utf-8", "surrogateescape")
        change = changes.get(name)
        if change is None:
            out += data[i:nul + 1 + id_size]
        else:
            out += change[0].lstrip("0").encode() + data[space:nul + 1] + bytes.fromhex(change[1])
            found += 1
        i = nul + 1 + id_size
    if found != len(changes):
        raise ValueError(f"not in the tree: {sorted(set(changes) - set(tree_modes(data, id_size)))}")
    return bytes(out)


def replaced_trees(trees: Mapping[str, tuple[str, bytes]], blobs: Sequence[Blob]) -> tuple[str, dict[str, bytes]]:
    """The root tree id of the parent's tree with `blobs` replaced, and every new tree (id → raw).

    `trees`: directory → (id, raw tree) at the parent, for every directory of `tree_dirs`. Only existing files are
    replaced, so no entry is added, removed or moved.
    """
    like = next(iter(trees.values()))[0]
    id_size = len(like) // 2
    changes: dict[str, dict[str, tuple[str, str]]] = {}
    for blob in blobs:
        folder, _, name = check_path(blob.path).rpartition("/")
        changes.setdefault(folder, {})[name] = (blob.mode, object_id("blob", blob.data, like))
    written: dict[str, bytes] = {}
    root = trees[""][0]
    for folder in tree_dirs(b.path for b in blobs):
        if folder not in changes:
            continue
        raw = _replace_entries(trees[folder][1], changes[folder], id_size)
        tree_id = object_id("tree", raw, like)
        written[tree_id] = raw
        if folder:
            parent, _, name = folder.rpartition("/")
            changes.setdefault(parent, {})[name] = ("40000", tree_id)
        else:
            root = tree_id
    return root, written


def commit_object(tree: str, parent: str, message: str, author: tuple[str, str], committer: tuple[str, str],
                  when: str) -> bytes:
    """A commit of `tree` on top of `parent`, its message cleaned as `git commit` does."""
    head = (f"tree {tree}\nparent {parent}\nauthor {ident(author[0])} <{ident(author[1])}> {when}\n"
            f"committer {ident(committer[0])} <{ident(committer[1])}> {when}\n\n")
    return (head + clean_message(message)).encode()


def loose_object(kind: str, data: bytes) -> bytes:
    """The bytes of a loose object file (`objects/xx/yyyy…`)."""
    return zlib.compress(f"{kind} {len(data)}\0".encode() + data)


def trailer_values(message: str, key: str) -> tuple[str, ...]:
    """The values of the `key:` trailers (case-insensitive key) of a message the bridge wrote: a subject, then
    paragraphs, the last one all `Key: value` lines. What `git log --format=%(trailers:key=…,valueonly)` gives for
    it; anyone else's messages go through git's own parser."""
    paragraphs = message.strip("\n").split("\n\n")
    if len(paragraphs) < 2:
        return ()
    lines = paragraphs[-1].split("\n")
    pairs = [line.partition(":") for line in lines]
    if not all(sep and re.fullmatch(r"[A-Za-z0-9-]+", k) for k, sep, _ in pairs):
        return ()
    return tuple(v.strip() for k, _, v in pairs if k.lower() == key.lower() and v.strip())


def diff_changes(raw: bytes) -> dict[str, tuple[str, str]]:
    """path → (new mode, new id) of every entry of `git diff-tree -r -z --raw` output."""
    fields = raw.decode(errors="surrogateescape").split("\0")
    return {fields[i + 1]: (fields[i].split()[1], fields[i].split()[3]) for i in range(0, len(fields) - 1, 2)}
