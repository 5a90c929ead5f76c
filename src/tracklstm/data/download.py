"""Fetch the dataset: a resumable, checksummed HTTP(S) download, or a local file.

Two kinds of dataset source:

* ``url``: :func:`download` streams the file into ``<dest>.part`` and renames it to ``dest``
  only once it is complete and (optionally) matches its sha256. Connection errors, 5xx
  answers and truncated bodies are retried with exponential backoff; each retry continues
  the partial file with an HTTP ``Range`` request, and so does a later invocation that finds
  the ``.part`` file left behind. A server that ignores ``Range`` (answers 200 instead of 206)
  makes the download start again from byte 0.
* ``path``: :func:`use_local` copies (atomically) or symlinks a local file, never modifying it.

How a download knows it is complete: the response's ``Content-Length``, the ``Content-Range``
total of a 206, or the terminating chunk of a chunked response (a connection closed before it
is an error, retried). A response with none of these ends when the server closes the
connection, which a server dying midway does too; so the download then asks for the bytes after
the end (``Range: bytes=<size>-``): a 416 naming that size confirms it, a 206 continues the
file, and a server that ignores ``Range`` leaves the size unconfirmed. A download whose size
and checksum are both unknown is accepted but logged as ``unverified`` (a warning).

Beside the downloaded file, :func:`download` writes ``<dest>.download.json``: the URL, the byte
count, the sha256 of the bytes, ``verified`` (true when the sha256 was given and matched, or the
size was known and matched) and ``verified_by``. ``to_parquet`` copies it into the quality
summary.

Errors raise :class:`DownloadError` with one line naming the URL or path and the cause; the
CLI logs that line and exits 1::

    python -m tracklstm.download --url URL [--sha256 HEX] [--retries N] --out PATH
    python -m tracklstm.download --path FILE [--mode copy|symlink] [--sha256 HEX] --out PATH
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import http.client
import json
import logging
import os
import re
import socket
import ssl
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

from tracklstm import __version__, stage_cli
from tracklstm.data.download_record import download_record_path
from tracklstm.files import atomic_path, check_outputs, sha256_file, write_json
from tracklstm.stage_cli import show_progress

log = logging.getLogger("tracklstm.download")

#: Bytes read from the network per call.
CHUNK = 1 << 18
#: Seconds between progress log lines when stderr is not a terminal.
LOG_INTERVAL = 10.0
#: Upper bound of one backoff sleep, in seconds.
MAX_BACKOFF = 60.0
#: HTTP status codes worth retrying (besides every 5xx).
RETRY_STATUS = frozenset({408, 425, 429})
MODES = ("copy", "symlink")

_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
_CONTENT_RANGE_RE = re.compile(r"^\s*bytes\s+(\d+)-(\d+)/(\d+|\*)\s*$", re.IGNORECASE)
_UNSATISFIED_RANGE_RE = re.compile(r"^\s*bytes\s+\*/(\d+)\s*$", re.IGNORECASE)


class DownloadError(Exception):
    """A dataset source could not be fetched; the message is one line naming URL/path and cause."""


class ChecksumError(DownloadError):
    """The fetched bytes do not have the expected sha256."""


class _Retryable(Exception):
    """A transient failure of one attempt (connection, 5xx, truncated body)."""


class _Fatal(Exception):
    """A failure that another attempt would not fix (404, bad TLS certificate, ...)."""


class _Restart(Exception):
    """The partial file cannot be continued; it was discarded, start again from byte 0."""


class _Outcome:
    """How one attempt ended: ``resumed`` (the file grew from more than one response) and
    ``end``: what confirmed the end of the file (``content-length``, ``chunked``,
    ``content-range``, ``range-probe``), None when nothing did (the connection just closed),
    or ``range-ignored`` for a probe the server answered with the whole file."""

    def __init__(self, resumed: bool, end: str | None) -> None:
        self.resumed = resumed
        self.end = end


def part_path(dest: str | os.PathLike[str]) -> Path:
    """Where :func:`download` keeps the partial bytes of ``dest`` between attempts."""
    dest = Path(dest)
    return dest.with_name(dest.name + ".part")


def _meta_path(dest: Path) -> Path:
    return dest.with_name(dest.name + ".part.json")


def normalize_sha256(sha256: str | None) -> str | None:
    """Lower-case hex digest, or ``None``; raise ``ValueError`` for anything not 64 hex digits."""
    if sha256 is None:
        return None
    digest = sha256.strip().lower()
    if not _SHA256_RE.match(digest):
        raise ValueError(f"sha256 must be 64 hexadecimal digits, got {sha256!r}")
    return digest


def _describe(exc: BaseException, timeout: float) -> str:
    """A short human cause for a network exception."""
    if isinstance(exc, urllib.error.HTTPError):
        return f"HTTP {exc.code} {exc.reason}".rstrip()
    if isinstance(exc, urllib.error.URLError):
        reason = exc.reason
        if isinstance(reason, BaseException):
            return _describe(reason, timeout)
        return str(reason)
    if isinstance(exc, socket.gaierror):
        return f"cannot resolve host ({exc.strerror or exc})"
    if isinstance(exc, TimeoutError):
        return f"timed out after {timeout:g} s"
    if isinstance(exc, http.client.IncompleteRead):
        return f"connection closed early ({len(exc.partial)} bytes read)"
    if isinstance(exc, http.client.RemoteDisconnected):
        return "server closed the connection without a response"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def _human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


class _Progress:
    """A tqdm bar on a terminal, otherwise a log line every :data:`LOG_INTERVAL` seconds."""

    def __init__(self, name: str, total: int | None, initial: int) -> None:
        self.name = name
        self.total = total
        self.done = initial
        self.bar: Any = None
        self.last_log = time.monotonic()
        if show_progress():
            from tqdm import tqdm

            self.bar = tqdm(
                total=total,
                initial=initial,
                unit="B",
                unit_scale=True,
                unit_divisor=1024,
                desc=name,
                leave=False,
            )

    def update(self, n: int) -> None:
        self.done += n
        if self.bar is not None:
            self.bar.update(n)
        elif time.monotonic() - self.last_log >= LOG_INTERVAL:
            self.last_log = time.monotonic()
            self._log()

    def _log(self) -> None:
        if self.total:
            log.info(
                "%s: %s of %s (%.0f%%)",
                self.name,
                _human(self.done),
                _human(self.total),
                100.0 * self.done / self.total,
            )
        else:
            log.info("%s: %s", self.name, _human(self.done))

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _read_meta(meta: Path) -> dict[str, Any]:
    try:
        data = json.loads(meta.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _discard(*paths: Path) -> None:
    for p in paths:
        p.unlink(missing_ok=True)


def _fetch_once(url: str, dest: Path, timeout: float, probe: bool = False) -> _Outcome:
    """One attempt: continue (or start) ``<dest>.part`` until the body ends.

    With ``probe`` (the partial file ended without a known size), a server that answers the
    Range request with the whole file (200) leaves the partial file alone.
    """
    part, meta = part_path(dest), _meta_path(dest)
    offset = part.stat().st_size if part.exists() else 0
    headers = {
        "User-Agent": f"tracklstm/{__version__} (python-urllib)",
        "Accept-Encoding": "identity",
    }
    if offset:
        headers["Range"] = f"bytes={offset}-"
        info = _read_meta(meta)
        # If-Range: the server answers 206 only while the file is the one we started on.
        validator = info.get("etag") or info.get("last_modified")
        if validator and not str(validator).startswith("W/"):
            headers["If-Range"] = str(validator)
    request = urllib.request.Request(url, headers=headers)

    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as exc:
        with contextlib.closing(exc):
            if exc.code == 416 and offset:
                # Range not satisfiable: either the partial file is already complete or it
                # is longer than the remote file (stale); decide from "bytes */total".
                match = _UNSATISFIED_RANGE_RE.match(exc.headers.get("Content-Range", ""))
                if match and int(match.group(1)) == offset:
                    log.info("%s: partial file is already complete (%d bytes)", url, offset)
                    return _Outcome(True, "range-probe")
                _discard(part, meta)
                raise _Restart("server cannot continue the partial file (HTTP 416)") from None
            cause = _describe(exc, timeout)
            if exc.code >= 500 or exc.code in RETRY_STATUS:
                raise _Retryable(cause) from None
            raise _Fatal(cause) from None
    except urllib.error.URLError as exc:
        if isinstance(exc.reason, ssl.SSLCertVerificationError):
            raise _Fatal(_describe(exc, timeout)) from None
        raise _Retryable(_describe(exc, timeout)) from None
    except (http.client.HTTPException, OSError) as exc:
        raise _Retryable(_describe(exc, timeout)) from None

    with response:
        status = response.status
        length_header = response.headers.get("Content-Length")
        length = int(length_header) if length_header and length_header.isdigit() else None
        resumed = False
        if status == 206 and offset:
            match = _CONTENT_RANGE_RE.match(response.headers.get("Content-Range", ""))
            if not match or int(match.group(1)) != offset:
                _discard(part, meta)
                raise _Restart(
                    "server answered a different range "
                    f"({response.headers.get('Content-Range')!r} for bytes={offset}-)"
                )
            end = int(match.group(2)) + 1
            total = None if match.group(3) == "*" else int(match.group(3))
            expected_end = end
            mode = "ab"
            resumed = True
            log.info("%s: resuming at byte %d", url, offset)
        elif 200 <= status < 300 and probe and offset:
            log.warning(
                "%s: the server ignores Range requests (HTTP %d): cannot confirm that the %d "
                "bytes received are the whole file",
                url,
                status,
                offset,
            )
            return _Outcome(False, "range-ignored")
        elif 200 <= status < 300:
            if offset:
                log.warning(
                    "%s: server ignored the Range request (HTTP %d); starting again from byte 0",
                    url,
                    status,
                )
            offset = 0
            total = length
            expected_end = length
            mode = "wb"
            meta.write_text(
                json.dumps(
                    {
                        "url": url,
                        "etag": response.headers.get("ETag"),
                        "last_modified": response.headers.get("Last-Modified"),
                    }
                )
            )
        else:
            raise _Fatal(f"unexpected HTTP status {status}")

        chunked = bool(getattr(response, "chunked", False))
        progress = _Progress(dest.name, total, offset)
        written = offset
        try:
            with open(part, mode) as fh:
                while True:
                    try:
                        block = response.read(CHUNK)
                    except (http.client.HTTPException, OSError) as exc:
                        raise _Retryable(_describe(exc, timeout)) from None
                    if not block:
                        break
                    try:
                        fh.write(block)
                    except OSError as exc:
                        raise _Fatal(f"cannot write {part}: {_describe(exc, timeout)}") from None
                    written += len(block)
                    progress.update(len(block))
                    if expected_end is not None and written > expected_end:
                        _discard(part, meta)
                        raise _Restart(f"server sent more than the announced {expected_end} bytes")
        finally:
            progress.close()

    if expected_end is not None and written < expected_end:
        raise _Retryable(
            f"connection closed early ({written - offset} of {expected_end - offset} bytes"
            f" of this response; {written} bytes kept in {part.name})"
        )
    if total is not None and written != total:
        # A 206 covering less than the rest of the file: continue with the next attempt.
        raise _Retryable(f"got bytes up to {written} of {total}")
    if total is not None:
        end = "content-range" if status == 206 else "content-length"
    else:
        end = "chunked" if chunked else None
    return _Outcome(resumed, end)


def download(
    url: str,
    dest: str | os.PathLike[str],
    *,
    sha256: str | None = None,
    retries: int = 5,
    backoff: float = 1.0,
    timeout: float = 60.0,
) -> Path:
    """Download ``url`` to ``dest`` and return ``dest``.

    ``retries`` is the number of attempts after the first; attempt *k* (from 1) waits
    ``backoff * 2**(k-1)`` seconds (at most :data:`MAX_BACKOFF`) before starting. The
    partial bytes live in ``<dest>.part`` and are continued with ``Range`` by the next attempt
    or the next call. With ``sha256`` the bytes must match it before ``dest`` appears; if
    ``dest`` already exists with that digest nothing is fetched. A body whose end nothing
    confirmed is probed with a Range request after its end (module docstring); when neither
    its size nor its checksum is known, the download is accepted as unverified (a warning).
    ``<dest>.download.json`` records the outcome. Raises :class:`DownloadError`
    (:class:`ChecksumError` for a digest mismatch).
    """
    parsed = urllib.parse.urlsplit(url)
    if parsed.scheme not in ("http", "https") or not parsed.netloc:
        raise DownloadError(f"{url}: not an http(s) URL")
    expected = normalize_sha256(sha256)
    if retries < 0:
        raise ValueError(f"retries must be >= 0, got {retries}")
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    part, meta = part_path(dest), _meta_path(dest)

    if expected and dest.is_file() and sha256_file(dest) == expected:
        log.info("%s already present with sha256 %s; not downloading", dest, expected)
        _write_record(dest, url, expected, "sha256")
        return dest

    info = _read_meta(meta)
    if part.exists() and info.get("url") not in (None, url):
        log.warning("%s: was a partial download of %s; discarding it", part, info["url"])
        _discard(part, meta)

    attempts = retries + 1
    failures = 0
    fresh_after_mismatch = False
    probes = 0  # Range requests after an end that nothing confirmed
    resumed = False
    started = time.monotonic()
    while True:
        try:
            outcome = _fetch_once(url, dest, timeout, probe=probes > 0)
        except _Fatal as exc:
            raise DownloadError(f"download of {url} failed: {exc}") from None
        except (_Retryable, _Restart) as exc:
            failures += 1
            if failures >= attempts:
                kept = f"; partial bytes kept in {part}" if part.exists() else ""
                raise DownloadError(
                    f"download of {url} failed after {attempts} attempt(s): {exc}{kept}"
                ) from None
            delay = min(backoff * 2 ** (failures - 1), MAX_BACKOFF)
            log.warning(
                "%s: attempt %d/%d failed (%s); retrying in %.2g s",
                url,
                failures,
                attempts,
                exc,
                delay,
            )
            time.sleep(delay)
            continue
        resumed = resumed or outcome.resumed
        if outcome.end is None and probes < attempts:
            # The connection closed with no size known: complete, or a server that died?
            probes += 1
            log.info("%s: no size announced; asking for the bytes after byte %d", url, _size(part))
            continue
        end = outcome.end if outcome.end not in (None, "range-ignored") else None

        if expected:
            actual = sha256_file(part)
            if actual != expected:
                _discard(part, meta)
                if resumed and not fresh_after_mismatch:
                    # Pieces from different responses may not belong together: try once whole.
                    log.warning(
                        "%s: sha256 mismatch after a resumed download; downloading again", url
                    )
                    fresh_after_mismatch = True
                    continue
                raise ChecksumError(
                    f"sha256 mismatch for {url}: expected {expected}, got {actual}"
                    " (partial file deleted)"
                )
        else:
            actual = sha256_file(part)
        with open(part, "rb+") as fh:
            os.fsync(fh.fileno())
        verified_by = "sha256" if expected else end
        _write_record(dest, url, actual, verified_by, part)
        os.replace(part, dest)
        _discard(meta)
        size = dest.stat().st_size
        elapsed = time.monotonic() - started
        log.info(
            "downloaded %s -> %s (%s in %.1f s%s)",
            url,
            dest,
            _human(size),
            elapsed,
            f", verified by {verified_by}" if verified_by else "",
        )
        if verified_by is None:
            log.warning(
                "%s: unverified download: the server announced no size and no sha256 was given;"
                " %s may be incomplete (set the dataset's sha256 to check it)",
                url,
                dest,
            )
        return dest


def _size(path: Path) -> int:
    return path.stat().st_size if path.exists() else 0


def _write_record(
    dest: Path, url: str, sha256: str, verified_by: str | None, data: Path | None = None
) -> None:
    """``<dest>.download.json``: what was fetched and whether its completeness was verified."""
    write_json(
        download_record_path(dest),
        {
            "url": url,
            "bytes": (data or dest).stat().st_size,
            "sha256": sha256,
            "verified": verified_by is not None,
            "verified_by": verified_by,
        },
    )


def use_local(
    path: str | os.PathLike[str],
    dest: str | os.PathLike[str],
    *,
    mode: str = "copy",
    sha256: str | None = None,
) -> Path:
    """Make the local file ``path`` available as ``dest`` and return ``dest``.

    ``mode="copy"`` writes an atomic copy (fresh mtime); ``mode="symlink"`` makes ``dest`` an
    absolute symlink to the resolved source. The source is only read. With ``sha256`` the
    source must match it. Raises :class:`DownloadError` for a missing/unreadable source or
    when ``dest`` is the source itself, :class:`ChecksumError` for a digest mismatch.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    download_record_path(dest).unlink(missing_ok=True)  # a record of an earlier download
    expected = normalize_sha256(sha256)
    src = Path(path).expanduser()
    dest = Path(dest)
    if not src.exists():
        raise DownloadError(f"local dataset source {src} does not exist")
    if not src.is_file():
        raise DownloadError(f"local dataset source {src} is not a regular file")
    if not os.access(src, os.R_OK):
        raise DownloadError(f"local dataset source {src} is not readable")
    src = src.resolve()
    if dest.exists() and not dest.is_symlink() and os.path.samefile(src, dest):
        raise DownloadError(f"output {dest} is the source file {src} itself; choose another path")

    if mode == "symlink":
        if expected:
            _check_local(src, expected, sha256_file(src))
        with atomic_path(dest) as tmp:
            os.symlink(src, tmp)
        log.info("linked %s -> %s", dest, src)
        return dest

    with atomic_path(dest) as tmp:
        digest = hashlib.sha256()
        with open(src, "rb") as fin, open(tmp, "wb") as fout:
            while block := fin.read(1 << 20):
                digest.update(block)
                fout.write(block)
            fout.flush()
            os.fsync(fout.fileno())
        if expected:
            _check_local(src, expected, digest.hexdigest())
    log.info("copied %s -> %s (%s)", src, dest, _human(dest.stat().st_size))
    return dest


def _check_local(src: Path, expected: str, actual: str) -> None:
    if actual != expected:
        raise ChecksumError(f"sha256 mismatch for {src}: expected {expected}, got {actual}")


def _sha256_arg(value: str) -> str:
    try:
        digest = normalize_sha256(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    assert digest is not None
    return digest


def _build_parser() -> argparse.ArgumentParser:
    parser = stage_cli.parser(
        "tracklstm download",
        "Fetch a dataset file from an http(s) URL (resumable) or a local path.",
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--url", help="http(s) URL to download")
    source.add_argument("--path", help="local file to copy or link")
    parser.add_argument("--out", required=True, help="output file")
    parser.add_argument("--sha256", type=_sha256_arg, help="expected sha256 (hex) of the file")
    parser.add_argument("--retries", type=int, default=5, help="retries after the first attempt")
    parser.add_argument("--backoff", type=float, default=1.0, help="first retry delay, seconds")
    parser.add_argument("--timeout", type=float, default=60.0, help="socket timeout, seconds")
    parser.add_argument("--mode", choices=MODES, help="for --path: copy (default) or symlink")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = _build_parser()
    args = parser.parse_args(argv)
    if args.url is not None and args.mode is not None:
        parser.error("--mode applies to --path only")
    if args.retries < 0:
        parser.error("--retries must be >= 0")

    def body() -> None:
        check_outputs({"--out": args.out}, {"--path": args.path})
        if args.url is not None:
            download(
                args.url,
                args.out,
                sha256=args.sha256,
                retries=args.retries,
                backoff=args.backoff,
                timeout=args.timeout,
            )
        else:
            use_local(args.path, args.out, mode=args.mode or "copy", sha256=args.sha256)

    return stage_cli.run(body, log, errors=(DownloadError,))


if __name__ == "__main__":
    raise SystemExit(main())
