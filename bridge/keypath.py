"""Key paths into a values file: `image.tag`, `images[1].tag`, `podAnnotations["example.com/rev"]`, `a\\.b.c`."""

from __future__ import annotations

KeyPath = tuple[str | int, ...]


def parse_key(path: str) -> KeyPath:
    """Split a key path into mapping keys (str) and list indices (int); ValueError names the problem."""
    if not path or not path.strip():
        raise ValueError("empty key path")
    parts: list[str | int] = []
    name: list[str] = []
    have_name = False
    i, n = 0, len(path)

    def close_name() -> None:
        nonlocal have_name
        if have_name:
            parts.append("".join(name))
        name.clear()
        have_name = False

    after_bracket = False
    while i < n:
        c = path[i]
        if c == "\\" and i + 1 < n and path[i + 1] in ".[]\\\"":
            name.append(path[i + 1])
            have_name = True
            i += 2
            after_bracket = False
            continue
        if c == ".":
            if not have_name and not after_bracket:
                raise ValueError(f"empty segment at position {i} in key path {path!r}")
            close_name()
            after_bracket = False
            i += 1
            if i == n:
                raise ValueError(f"key path {path!r} ends with '.'")
            continue
        if c == "[":
            if not have_name and not after_bracket and parts == []:
                raise ValueError(f"key path {path!r} starts with '['")
            close_name()
            end = path.find("]", i)
            if end < 0:
                raise ValueError(f"unclosed '[' at position {i} in key path {path!r}")
            inner = path[i + 1 : end]
            if len(inner) >= 2 and inner[0] == inner[-1] and inner[0] in "\"'":
                parts.append(inner[1:-1])
            elif inner.isdigit():
                parts.append(int(inner))
            else:
                raise ValueError(f"index [{inner}] in key path {path!r} must be a number or a quoted key")
            i = end + 1
            after_bracket = True
            if i < n and path[i] not in ".[":
                raise ValueError(f"expected '.' or '[' after ']' at position {i} in key path {path!r}")
            continue
        if c in "]\"":
            raise ValueError(f"unexpected {c!r} at position {i} in key path {path!r}")
        if after_bracket:
            raise ValueError(f"expected '.' after ']' in key path {path!r}")
        name.append(c)
        have_name = True
        i += 1
    close_name()
    if not parts:
        raise ValueError(f"empty key path {path!r}")
    return tuple(parts)


def format_key(parts: KeyPath) -> str:
    """The canonical text form of a parsed key path (inverse of parse_key)."""
    out: list[str] = []
    for p in parts:
        if isinstance(p, int):
            out.append(f"[{p}]")
        else:
            escaped = "".join("\\" + ch if ch in ".[]\"\\" else ch for ch in p)
            out.append(("." if out else "") + escaped)
    return "".join(out)
