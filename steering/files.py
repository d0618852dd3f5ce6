"""Reading and writing files the pack does not trust or must not half-write: one place for both.

* :func:`file_problem` / :func:`read_regular_file`: a file named by a user, a workflow or an operator is only
  read when it is a regular file of bounded size, checked on the opened descriptor (no race between the
  check and the read), and a FIFO or device is never read (a FIFO without a writer would block).
* :func:`parse_strict_json`: UTF-8 JSON with bounded nesting, no duplicate keys, no NaN/Infinity.
* :func:`atomic_file`: a file appears whole or not at all (temporary file in the same folder, fsync,
  rename); an error or a crash never leaves a partial file at the path.

No ComfyUI import: vector files, the operator's policy and the provenance key all use it.
"""
from __future__ import annotations

import contextlib
import json
import os
import stat
import tempfile
from typing import Any, Callable, Iterator

ErrorFactory = Callable[[str], Exception]


def file_problem(path: str) -> str | None:
    """What keeps `path` from being read as a file (checked without opening it, so a FIFO never blocks),
    or None for a regular file."""
    try:
        info = os.stat(path)
    except FileNotFoundError:
        return "no such file"
    except OSError as e:
        return f"cannot be read: {e.strerror}"
    if stat.S_ISDIR(info.st_mode):
        return "is a directory, not a file"
    if not stat.S_ISREG(info.st_mode):
        return "is not a regular file (a device, FIFO or socket)"
    return None


def read_regular_file(path: str, limit: int, error: ErrorFactory) -> bytes:
    """The bytes of `path` if it is a regular file of at most `limit` bytes; else ``error(problem)`` is raised."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0))
    except FileNotFoundError:
        raise error("no such file") from None
    except IsADirectoryError:
        raise error("is a directory, not a file") from None
    except OSError as e:
        raise error(f"cannot be opened: {e.strerror}") from None
    try:
        info = os.fstat(fd)
        if stat.S_ISDIR(info.st_mode):
            raise error("is a directory, not a file")
        if not stat.S_ISREG(info.st_mode):
            raise error("is not a regular file (a device, FIFO or socket)")
        if info.st_size > limit:
            raise error(f"is {info.st_size} bytes; at most {limit} are read")
        chunks, total = [], 0
        while total <= limit:
            chunk = os.read(fd, min(65536, limit + 1 - total))
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
        if total > limit:
            raise error(f"grew past {limit} bytes while being read")
        return b"".join(chunks)
    except OSError as e:
        raise error(f"cannot be read: {e.strerror}") from None
    finally:
        os.close(fd)


def nesting_depth(text: str) -> int:
    """Deepest [ / { nesting of a JSON text (outside strings), without parsing it."""
    depth = deepest = 0
    in_string = escaped = False
    for ch in text:
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif ch in "]}":
            depth -= 1
    return deepest


def parse_strict_json(data: bytes, max_depth: int, error: ErrorFactory) -> Any:
    """Strict JSON: UTF-8, nesting at most `max_depth`, no duplicate keys, no NaN/Infinity; any problem is
    raised as ``error(problem)``."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise error(f"is not UTF-8 text (byte {e.start})") from None
    depth = nesting_depth(text)
    if depth > max_depth:
        raise error(f"nests arrays/objects {depth} deep; at most {max_depth} allowed")

    def no_duplicates(pairs):
        seen = {}
        for key, value in pairs:
            if key in seen:
                raise error(f"key {key!r} appears twice in one object")
            seen[key] = value
        return seen

    def no_constant(name):
        raise error(f"{name} is not a JSON number")

    try:
        return json.loads(text, object_pairs_hook=no_duplicates, parse_constant=no_constant)
    except json.JSONDecodeError as e:
        raise error(f"is not valid JSON: {e.msg} at line {e.lineno} column {e.colno}") from None
    except RecursionError:
        raise error("nests too deeply to parse") from None


@contextlib.contextmanager
def atomic_file(path: str, mode: int = 0o644, suffix: str = "") -> Iterator[str]:
    """Yield a temporary path in `path`'s folder; when the block ends without an error, the file written
    there is fsynced, given `mode` and renamed onto `path` (the folder is created if needed). On any error
    (or interrupt) the temporary file is removed and `path` is untouched."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=suffix, dir=directory)
    os.close(fd)
    try:
        yield tmp
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def write_atomically(path: str, data: bytes, mode: int = 0o644) -> str:
    """Write `data` to `path` whole or not at all (see :func:`atomic_file`)."""
    with atomic_file(path, mode) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)
    return path
