"""Cleave routes: HTTP method + path prefix or glob, the subset HAProxy matches natively.

A pattern without wildcards is a *prefix* (HAProxy `path_beg`); one with `*`
(any run of characters, `/` included) or `?` (one character) is a *glob*
over the whole path (rendered to `path_reg`). The most specific route wins:
specificity is the length of the literal text before the first wildcard.
"""

from __future__ import annotations

import re
from functools import lru_cache

METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")
ANY_METHOD = "*"
_PATH_CHARS = re.compile(r"^/[A-Za-z0-9._~!$&'()+,;=:@%/*?-]*$")


def parse_route(text: str) -> dict[str, str]:
    """'GET /catalog' -> {'method': 'GET', 'path': '/catalog'}; a bare path means any method."""
    parts = text.split()
    if len(parts) == 1:
        return {"method": ANY_METHOD, "path": parts[0]}
    if len(parts) == 2:
        return {"method": parts[0].upper(), "path": parts[1]}
    raise ValueError(f"route {text!r} must be 'METHOD /path' or '/path'")


def check_method(method: str) -> str:
    method = method.upper()
    if method != ANY_METHOD and method not in METHODS:
        raise ValueError(f"unknown method {method!r}; allowed: {', '.join(METHODS)} or '*'")
    return method


def check_path(path: str) -> str:
    if not _PATH_CHARS.match(path):
        raise ValueError(
            f"path pattern {path!r} must start with '/' and use URL path characters, "
            "'*' (any characters) and '?' (one character) only"
        )
    if "**" in path:
        raise ValueError(f"path pattern {path!r}: '**' is the same as '*'; write one")
    return path


def is_glob(path: str) -> bool:
    return "*" in path or "?" in path


def specificity(path: str) -> int:
    """Length of the literal text before the first wildcard: longer wins."""
    return len(re.split(r"[*?]", path, maxsplit=1)[0])


def to_regex(path: str) -> str:
    """The anchored regular expression HAProxy's `path_reg` uses for a pattern."""
    if not is_glob(path):
        return "^" + re.escape(path)
    body = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in path)
    return f"^{body}$"


def methods_meet(a: str, b: str) -> bool:
    return a == ANY_METHOD or b == ANY_METHOD or a == b


def patterns_meet(a: str, b: str) -> bool:
    """True when some request path matches both patterns.

    A prefix pattern is the glob `prefix*`; two globs meet when their
    languages intersect, decided by walking both patterns at once.
    """
    ga = a if is_glob(a) else a + "*"
    gb = b if is_glob(b) else b + "*"
    return _globs_meet(ga, gb)


@lru_cache(maxsize=4096)
def _globs_meet(a: str, b: str) -> bool:
    if not a and not b:
        return True
    if a[:1] == "*":
        # '*' eats nothing, or one character of b (b's '*' may also eat nothing).
        if _globs_meet(a[1:], b):
            return True
        return bool(b) and _globs_meet(a, b[1:])
    if b[:1] == "*":
        return _globs_meet(b, a)
    if not a or not b:
        return False
    if a[0] == "?" or b[0] == "?" or a[0] == b[0]:
        return _globs_meet(a[1:], b[1:])
    return False
