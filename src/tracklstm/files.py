"""Files in and out, for every stage: one way to write under a temporary name, input checks that
name the file, the refusal to write over an input, gzip found by its magic bytes, JSON and
hashing.

Writing: a file is written under a temporary path and renamed to its final name only when it is
complete (:func:`atomic_path`, and :func:`atomic_paths` for files that appear together or not at
all), so a killed or failing writer never leaves a file under the final name that looks
finished. The temporary path has the final file's own name, inside a hidden folder beside it
(``.model.ts.<pid>.tmp/model.ts``): formats that record their file name (the inner folder of a
TorchScript archive or an AOTInductor package) or check its suffix (torch.export wants ``.pt2``)
see the final name, so the bytes do not depend on where they were written.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import json
import os
import shutil
import zlib
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, BinaryIO

#: Paths a command names, by the option that names them: ``{"--out": path}``; a value may be
#: None (not given) or several paths.
Named = Mapping[str, "str | os.PathLike[str] | Iterable[str | os.PathLike[str]] | None"]

# --------------------------------------------------------------------------------------------
# Writing


def temporary_path(path: str | os.PathLike[str]) -> Path:
    """Where ``path`` is written before it is complete: its own name in a hidden folder beside
    it."""
    final = Path(path)
    return final.parent / f".{final.name}.{os.getpid()}.tmp" / final.name


@contextlib.contextmanager
def atomic_paths(paths: Sequence[str | os.PathLike[str]]) -> Iterator[list[Path]]:
    """Temporary paths for ``paths``: all renamed to their final names when the block succeeds,
    none left behind when it fails (a rename that fails half-way takes back the ones done)."""
    finals = [output_file(p) for p in paths]
    tmps = [temporary_path(p) for p in finals]
    for tmp in tmps:
        shutil.rmtree(tmp.parent, ignore_errors=True)  # a dead writer's, same process id
        tmp.parent.mkdir(parents=True)
    done: list[Path] = []
    try:
        yield tmps
        for tmp, final in zip(tmps, finals, strict=True):
            os.replace(tmp, final)
            done.append(final)
    except BaseException:
        for final in done:
            final.unlink(missing_ok=True)
        raise
    finally:
        for tmp in tmps:
            shutil.rmtree(tmp.parent, ignore_errors=True)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """A temporary path for ``path``, renamed to it only when the block succeeds."""
    with atomic_paths([path]) as (tmp,):
        yield tmp


def write_json(path: str | os.PathLike[str], data: Any) -> None:
    """Write ``data`` as indented JSON, atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")


def output_file(path: str | os.PathLike[str], what: str = "output") -> Path:
    """``path`` as a Path, or a ValueError naming it when it cannot be written as a file."""
    p = Path(path)
    if p.is_dir():
        raise ValueError(f"{p}: is a directory; the {what} must be a file path")
    for parent in p.parents:
        if parent.exists():
            if not parent.is_dir():
                raise ValueError(f"{p}: {parent} is a file, not a directory ({what})")
            break
    return p


def same_file(a: str | os.PathLike[str], b: str | os.PathLike[str]) -> bool:
    """Whether two paths name one file: the same path once resolved (``./a.csv``, symbolic
    links), or, both existing, the same file (hard links)."""
    if Path(a).resolve() == Path(b).resolve():
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def _paths(named: Named) -> list[tuple[str, Path]]:
    out = []
    for what, value in named.items():
        if value is None:
            continue
        values = [value] if isinstance(value, str | os.PathLike) else list(value)
        out += [(what, Path(v)) for v in values]
    return out


def check_outputs(outputs: Named, inputs: Named | None = None) -> None:
    """Before anything is read or written: no two outputs are one file, and no output is one
    of the inputs (which writing it would destroy). A ValueError names the options and paths.
    (Whether an output can be a file at all is checked when it is written: ``atomic_paths``.)"""
    outs = _paths(outputs)
    ins = _paths(inputs or {})
    for i, (what, path) in enumerate(outs):
        for other_what, other in outs[:i]:
            if same_file(path, other):
                raise ValueError(f"{what} {path} and {other_what} {other} are the same file")
        for in_what, source in ins:
            if same_file(path, source):
                raise ValueError(
                    f"{what} {path} is the input {in_what} {source}: writing it would destroy "
                    "the input; give another path"
                )


# --------------------------------------------------------------------------------------------
# Reading


def input_file(path: str | os.PathLike[str], what: str = "input") -> Path:
    """``path`` as a Path, or a ValueError naming it when it is missing, a folder or unreadable."""
    p = Path(path)
    if p.is_dir():
        raise ValueError(f"{p}: is a directory, expected the {what} file")
    if not p.exists():
        raise ValueError(f"{p}: no such file ({what})")
    if not os.access(p, os.R_OK):
        raise ValueError(f"{p}: not readable ({what})")
    return p


#: The first bytes of a gzip file: such a file is read decompressed, whatever its name.
GZIP_MAGIC = b"\x1f\x8b"
#: What reading broken gzip data raises.
GZIP_ERRORS = (EOFError, zlib.error, gzip.BadGzipFile)


def open_maybe_gzip(path: str | os.PathLike[str]) -> tuple[BinaryIO, str | None]:
    """Open a file for reading bytes: ``(stream, "gzip" or None)``; gzip found by its magic."""
    with open(path, "rb") as fh:
        magic = fh.read(2)
    if magic == GZIP_MAGIC:
        return gzip.open(path, "rb"), "gzip"  # type: ignore[return-value]
    return open(path, "rb"), None


def gzip_error(path: str | os.PathLike[str], err: BaseException) -> str:
    """The message for gzip data that cannot be decompressed."""
    return f"{path}: cannot decompress: gzip data corrupt or cut short ({err})"


def read_bytes(path: str | os.PathLike[str], what: str = "input") -> bytes:
    """A whole file's bytes, decompressed when it is gzip; ValueError naming it otherwise."""
    p = input_file(path, what)
    data = p.read_bytes()
    if data[:2] != GZIP_MAGIC:
        return data
    try:
        return gzip.decompress(data)
    except GZIP_ERRORS as err:
        raise ValueError(gzip_error(p, err)) from None


def sha256_file(path: str | os.PathLike[str], chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file's bytes, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()
