"""Tests of the dataset downloader against real HTTP servers on 127.0.0.1."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import re
import socket
import struct
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tracklstm.data import download as dl
from tracklstm.data.download import (
    ChecksumError,
    DownloadError,
    download,
    main,
    part_path,
    use_local,
)
from tracklstm.data.download_record import download_record_path

PAYLOAD = random.Random(20240611).randbytes(300_000)  # > one read chunk (256 KiB)
SHA = hashlib.sha256(PAYLOAD).hexdigest()
FAST = {"backoff": 0.01, "timeout": 10.0}


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.payload = PAYLOAD
        self.support_range = True
        self.truncate = 0  # how many of the next responses stop after half their body
        self.statuses: list[int] = []  # error statuses answered before serving the file
        self.etag: str | None = None
        self.requests: list[dict[str, str]] = []  # headers of every request, in order
        self.framing = "length"  # "length", "chunked" or "close" (no Content-Length)
        self.die: list[str] = []  # for the next responses: "close" or "reset" after half

    def handle_error(self, request: object, client_address: object) -> None:
        pass  # a handler that dies on purpose: no traceback on stderr

    def url(self, name: str = "data.bin") -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/{name}"

    def ranges(self) -> list[str | None]:
        return [r.get("Range") for r in self.requests]


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def log_message(self, format: str, *args: object) -> None:  # keep pytest output clean
        pass

    def do_GET(self) -> None:
        srv = self.server
        srv.requests.append(dict(self.headers.items()))
        if srv.statuses:
            self.send_error(srv.statuses.pop(0))
            return
        if self.path != "/data.bin":
            self.send_error(404)
            return
        data = srv.payload
        start = 0
        rng = self.headers.get("Range")
        if_range = self.headers.get("If-Range")
        honour = srv.support_range and rng and (if_range is None or if_range == srv.etag)
        if honour:
            match = re.fullmatch(r"bytes=(\d+)-", rng)
            assert match, rng
            start = int(match.group(1))
            if start >= len(data):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        body = data[start:]
        if srv.framing == "length":
            self.send_header("Content-Length", str(len(body)))  # always the full length
        elif srv.framing == "chunked":
            self.send_header("Transfer-Encoding", "chunked")
        if srv.etag:
            self.send_header("ETag", srv.etag)
        self.end_headers()
        die = srv.die.pop(0) if srv.die else None
        if srv.truncate > 0 or die:
            srv.truncate = max(0, srv.truncate - 1)
            body = body[: len(body) // 2]
        if srv.framing == "chunked":
            self.wfile.write(b"%x\r\n%s\r\n" % (len(body), body))
            if not die:
                self.wfile.write(b"0\r\n\r\n")
        else:
            self.wfile.write(body)
        self.wfile.flush()
        if die == "reset":  # the connection is reset (RST), as by a crashed host
            linger = struct.pack("ii", 1, 0)
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, linger)
        if die:
            self.close_connection = True
            raise ConnectionAbortedError("the server dies midway")  # closes the socket

    def send_response(self, code: int, message: str | None = None) -> None:
        if self.server.framing == "chunked":
            self.protocol_version = "HTTP/1.1"  # chunked transfer needs HTTP/1.1
        super().send_response(code, message)


@pytest.fixture
def server() -> Iterator[_Server]:
    srv = _Server()
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        yield srv
    finally:
        srv.shutdown()
        srv.server_close()
        thread.join(timeout=5)


@pytest.fixture
def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


# --------------------------------------------------------------------------- download


def test_plain_download(server: _Server, tmp_path: Path) -> None:
    dest = tmp_path / "sub" / "data.bin"
    out = download(server.url(), dest, sha256=SHA.upper(), **FAST)
    assert out == dest
    assert dest.read_bytes() == PAYLOAD
    assert server.ranges() == [None]
    # No .part / metadata left; the download record beside the file.
    assert _leftovers(dest.parent) == ["data.bin", "data.bin.download.json"]
    record = json.loads(download_record_path(dest).read_text())
    assert record == {
        "url": server.url(),
        "bytes": len(PAYLOAD),
        "sha256": SHA,
        "verified": True,
        "verified_by": "sha256",
    }


@pytest.mark.parametrize("framing", ["length", "chunked"])
def test_record_without_checksum_is_verified_by_the_framing(
    server: _Server, tmp_path: Path, framing: str
) -> None:
    server.framing = framing
    dest = tmp_path / "data.bin"
    download(server.url(), dest, **FAST)
    assert dest.read_bytes() == PAYLOAD
    record = json.loads(download_record_path(dest).read_text())
    assert record["sha256"] == SHA and record["bytes"] == len(PAYLOAD)
    assert record["verified"] is True
    assert record["verified_by"] == ("content-length" if framing == "length" else "chunked")
    assert server.ranges() == [None]


@pytest.mark.parametrize("die", ["close", "reset"])
def test_no_length_and_a_server_dying_midway_is_not_accepted(
    server: _Server, tmp_path: Path, die: str
) -> None:
    """No Content-Length: a clean close midway looks like the end, a reset is an error; both
    are caught (the Range probe after the end, the error retried) and the file completed."""
    server.framing = "close"
    server.die = [die]
    dest = tmp_path / "data.bin"
    download(server.url(), dest, retries=2, **FAST)
    assert dest.read_bytes() == PAYLOAD
    half = len(PAYLOAD) // 2
    if die == "close":  # the probe's 206 carries the rest and the size
        assert server.ranges() == [None, f"bytes={half}-"]
    else:  # the reset is an error, retried from the bytes that arrived (a reset may lose all),
        # and a retry from byte 0 ends unframed again: then the probe confirms its size
        assert len(server.requests) in (2, 3)
    record = json.loads(download_record_path(dest).read_text())
    assert record["verified"] is True and record["verified_by"] in ("content-range", "range-probe")


def test_probe_answered_416_confirms_the_size(server: _Server, tmp_path: Path) -> None:
    server.framing = "close"
    dest = tmp_path / "data.bin"
    download(server.url(), dest, **FAST)
    assert dest.read_bytes() == PAYLOAD
    assert server.ranges() == [None, f"bytes={len(PAYLOAD)}-"]
    assert json.loads(download_record_path(dest).read_text())["verified_by"] == "range-probe"


@pytest.mark.parametrize("framing", ["close", "chunked"])
def test_death_midway_without_retries_leaves_no_file(
    server: _Server, tmp_path: Path, framing: str
) -> None:
    """With no attempt left, a body cut short is an error (the chunked one before its
    terminating chunk; the unframed one when the probe finds the server gone)."""
    server.framing = framing
    server.die = ["close"] if framing == "chunked" else ["close", "reset"]
    dest = tmp_path / "data.bin"
    with pytest.raises(DownloadError, match="failed after 1 attempt"):
        download(server.url(), dest, retries=0, **FAST)
    assert not dest.exists() and not download_record_path(dest).exists()
    assert part_path(dest).exists()  # kept for the next call


def test_no_length_and_no_range_support_is_accepted_unverified(
    server: _Server, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    server.framing = "close"
    server.support_range = False
    dest = tmp_path / "data.bin"
    assert main(["--url", server.url(), "--out", str(dest), "--backoff", "0.01"]) == 0
    assert dest.read_bytes() == PAYLOAD
    assert server.ranges() == [None, f"bytes={len(PAYLOAD)}-"]  # the probe got a 200
    record = json.loads(download_record_path(dest).read_text())
    assert record["verified"] is False and record["verified_by"] is None
    assert record["sha256"] == SHA
    warnings = [line for line in capsys.readouterr().err.splitlines() if " WARNING " in line]
    assert any("unverified download" in w and str(dest) in w for w in warnings)

    # With a sha256 the same download is verified by it.
    download(server.url(), tmp_path / "again.bin", sha256=SHA, **FAST)
    record = json.loads(download_record_path(tmp_path / "again.bin").read_text())
    assert record["verified"] is True and record["verified_by"] == "sha256"


def test_existing_dest_with_right_digest_is_not_fetched(server: _Server, tmp_path: Path) -> None:
    dest = tmp_path / "data.bin"
    dest.write_bytes(PAYLOAD)
    download(server.url(), dest, sha256=SHA, **FAST)
    assert server.requests == []


def test_truncated_body_is_resumed_with_range(server: _Server, tmp_path: Path) -> None:
    server.truncate = 1
    dest = tmp_path / "data.bin"
    download(server.url(), dest, sha256=SHA, retries=3, **FAST)
    assert dest.read_bytes() == PAYLOAD
    half = len(PAYLOAD) // 2
    assert server.ranges() == [None, f"bytes={half}-"]
    assert not part_path(dest).exists()


def test_resume_across_invocations(server: _Server, tmp_path: Path) -> None:
    dest = tmp_path / "data.bin"
    server.truncate = 1
    with pytest.raises(DownloadError, match="after 1 attempt"):
        download(server.url(), dest, retries=0, **FAST)
    half = len(PAYLOAD) // 2
    assert not dest.exists()
    assert part_path(dest).read_bytes() == PAYLOAD[:half]

    download(server.url(), dest, sha256=SHA, retries=0, **FAST)
    assert dest.read_bytes() == PAYLOAD
    assert server.ranges() == [None, f"bytes={half}-"]


def test_preexisting_part_file_is_continued(server: _Server, tmp_path: Path) -> None:
    dest = tmp_path / "data.bin"
    part_path(dest).write_bytes(PAYLOAD[:12345])
    download(server.url(), dest, sha256=SHA, **FAST)
    assert dest.read_bytes() == PAYLOAD
    assert server.ranges() == ["bytes=12345-"]


def test_server_ignoring_range_restarts_cleanly(server: _Server, tmp_path: Path) -> None:
    server.support_range = False
    dest = tmp_path / "data.bin"
    # Wrong bytes in the partial file: appending to them would corrupt the result.
    part_path(dest).write_bytes(b"\xff" * 5000)
    download(server.url(), dest, sha256=SHA, **FAST)
    assert dest.read_bytes() == PAYLOAD
    assert server.ranges() == ["bytes=5000-"]  # asked, got 200, took the full body


def test_server_ignoring_range_after_truncation(server: _Server, tmp_path: Path) -> None:
    server.support_range = False
    server.truncate = 2
    dest = tmp_path / "data.bin"
    download(server.url(), dest, retries=3, **FAST)
    assert dest.read_bytes() == PAYLOAD
    assert len(server.requests) == 3


def test_complete_part_file_answered_416_is_accepted(server: _Server, tmp_path: Path) -> None:
    dest = tmp_path / "data.bin"
    part_path(dest).write_bytes(PAYLOAD)
    download(server.url(), dest, sha256=SHA, **FAST)
    assert dest.read_bytes() == PAYLOAD
    assert server.ranges() == [f"bytes={len(PAYLOAD)}-"]


def test_part_file_longer_than_remote_restarts(server: _Server, tmp_path: Path) -> None:
    dest = tmp_path / "data.bin"
    part_path(dest).write_bytes(PAYLOAD + b"junk")
    download(server.url(), dest, sha256=SHA, retries=2, **FAST)
    assert dest.read_bytes() == PAYLOAD
    assert server.ranges() == [f"bytes={len(PAYLOAD) + 4}-", None]


def test_changed_remote_file_is_not_spliced(server: _Server, tmp_path: Path) -> None:
    """If-Range with the first ETag: a changed file comes back whole (200), not as a tail."""
    dest = tmp_path / "data.bin"
    server.etag = '"v1"'
    server.truncate = 1
    with pytest.raises(DownloadError):
        download(server.url(), dest, retries=0, **FAST)
    new = PAYLOAD[::-1]
    server.payload, server.etag = new, '"v2"'
    download(server.url(), dest, retries=0, **FAST)
    assert dest.read_bytes() == new
    assert server.requests[1]["If-Range"] == '"v1"'
    assert server.requests[1]["Range"] == f"bytes={len(PAYLOAD) // 2}-"


def test_part_file_of_another_url_is_discarded(server: _Server, tmp_path: Path) -> None:
    dest = tmp_path / "data.bin"
    part_path(dest).write_bytes(b"\x00" * 1000)
    (tmp_path / "data.bin.part.json").write_text(json.dumps({"url": "http://elsewhere/x"}))
    download(server.url(), dest, sha256=SHA, **FAST)
    assert dest.read_bytes() == PAYLOAD
    assert server.ranges() == [None]


def test_5xx_is_retried(server: _Server, tmp_path: Path) -> None:
    server.statuses = [503, 500]
    dest = tmp_path / "data.bin"
    download(server.url(), dest, sha256=SHA, retries=2, **FAST)
    assert dest.read_bytes() == PAYLOAD
    assert len(server.requests) == 3


def test_5xx_exhausting_retries(server: _Server, tmp_path: Path) -> None:
    server.statuses = [503] * 3
    with pytest.raises(DownloadError) as info:
        download(server.url(), tmp_path / "data.bin", retries=2, **FAST)
    msg = str(info.value)
    assert server.url() in msg and "503" in msg and "3 attempt" in msg
    assert "\n" not in msg
    assert len(server.requests) == 3


def test_checksum_mismatch(server: _Server, tmp_path: Path) -> None:
    dest = tmp_path / "data.bin"
    wrong = hashlib.sha256(b"something else").hexdigest()
    with pytest.raises(ChecksumError) as info:
        download(server.url(), dest, sha256=wrong, **FAST)
    msg = str(info.value)
    assert server.url() in msg and wrong in msg and SHA in msg
    assert not dest.exists()
    assert _leftovers(tmp_path) == []  # no partial that could pass for the file
    assert len(server.requests) == 1  # a single-response mismatch is not retried


def test_checksum_mismatch_after_resume_retries_once_whole(server: _Server, tmp_path: Path) -> None:
    server.truncate = 1
    dest = tmp_path / "data.bin"
    wrong = "0" * 64
    with pytest.raises(ChecksumError, match=SHA):
        download(server.url(), dest, sha256=wrong, retries=3, **FAST)
    half = len(PAYLOAD) // 2
    assert server.ranges() == [None, f"bytes={half}-", None]
    assert _leftovers(tmp_path) == []


def test_404_is_one_clear_error(server: _Server, tmp_path: Path) -> None:
    url = server.url("missing.csv")
    with pytest.raises(DownloadError) as info:
        download(url, tmp_path / "x.csv", retries=3, **FAST)
    msg = str(info.value)
    assert url in msg and "404" in msg and "\n" not in msg
    assert len(server.requests) == 1  # not retried
    assert _leftovers(tmp_path) == []


def test_connection_refused(closed_port: int, tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{closed_port}/data.bin"
    with pytest.raises(DownloadError) as info:
        download(url, tmp_path / "data.bin", retries=2, **FAST)
    msg = str(info.value)
    assert url in msg and "refused" in msg.lower() and "3 attempt" in msg
    assert not (tmp_path / "data.bin").exists()


def test_not_http_url(tmp_path: Path) -> None:
    with pytest.raises(DownloadError, match="ftp://host/x"):
        download("ftp://host/x", tmp_path / "x")


def test_bad_sha256_argument(server: _Server, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="64 hexadecimal"):
        download(server.url(), tmp_path / "x", sha256="abc")
    assert server.requests == []


def test_progress_bar_path(server: _Server, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(dl, "show_progress", lambda: True)
    dest = tmp_path / "data.bin"
    download(server.url(), dest, sha256=SHA, **FAST)
    assert dest.read_bytes() == PAYLOAD


def test_progress_log_lines(server: _Server, tmp_path: Path, monkeypatch, caplog) -> None:
    monkeypatch.setattr(dl, "show_progress", lambda: False)
    monkeypatch.setattr(dl, "LOG_INTERVAL", 0.0)
    caplog.set_level(logging.INFO, logger="tracklstm.data.download")
    download(server.url(), tmp_path / "data.bin", **FAST)
    assert any(r.getMessage().endswith("(100%)") for r in caplog.records)


# --------------------------------------------------------------------------- CLI


def test_cli_download_ok(server: _Server, tmp_path: Path) -> None:
    dest = tmp_path / "d.bin"
    assert main(["--url", server.url(), "--sha256", SHA, "--out", str(dest)]) == 0
    assert dest.read_bytes() == PAYLOAD


def _error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if " ERROR " in line]


def test_cli_404_exits_1(server: _Server, tmp_path: Path, capsys) -> None:
    url = server.url("nope")
    assert main(["--url", url, "--out", str(tmp_path / "x"), "--retries", "0"]) == 1
    err = capsys.readouterr().err
    errors = _error_lines(err)
    assert len(errors) == 1 and url in errors[0] and "404" in errors[0]
    assert "Traceback" not in err


def test_cli_refused_subprocess_no_traceback(closed_port: int, tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{closed_port}/data.bin"
    env = dict(os.environ)
    src = str(Path(dl.__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [src, env.get("PYTHONPATH")]))
    cmd = [sys.executable, "-m", "tracklstm.data.download", "--url", url, "--retries", "0"]
    proc = subprocess.run(
        [*cmd, "--out", str(tmp_path / "x")],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    error_lines = _error_lines(proc.stderr)
    assert len(error_lines) == 1 and url in error_lines[0]


def test_cli_mode_with_url_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as info:
        main(["--url", "http://x/y", "--mode", "copy", "--out", str(tmp_path / "x")])
    assert info.value.code == 2


# --------------------------------------------------------------------------- use_local


@pytest.fixture
def source(tmp_path: Path) -> Path:
    src = tmp_path / "src" / "tracks.csv"
    src.parent.mkdir()
    src.write_bytes(PAYLOAD)
    os.utime(src, ns=(1_600_000_000_000_000_000, 1_600_000_000_123_456_789))
    return src


def _assert_untouched(src: Path) -> None:
    assert src.read_bytes() == PAYLOAD
    assert src.stat().st_mtime_ns == 1_600_000_000_123_456_789
    assert not src.is_symlink()


def test_use_local_copy(source: Path, tmp_path: Path) -> None:
    dest = tmp_path / "out" / "data.csv"
    assert use_local(source, dest, sha256=SHA) == dest
    assert dest.read_bytes() == PAYLOAD
    assert not dest.is_symlink()
    assert not os.path.samefile(source, dest)
    _assert_untouched(source)
    dest.write_bytes(b"edited copy")  # the copy is independent of the source
    _assert_untouched(source)


def test_use_local_symlink(source: Path, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(source.parent)
    dest = tmp_path / "out" / "data.csv"
    use_local("tracks.csv", dest, mode="symlink", sha256=SHA)  # relative source path
    assert dest.is_symlink()
    target = os.readlink(dest)
    assert os.path.isabs(target) and Path(target) == source.resolve()
    assert dest.read_bytes() == PAYLOAD
    _assert_untouched(source)
    # Re-running replaces the link atomically.
    use_local(source, dest, mode="symlink")
    assert Path(os.readlink(dest)) == source.resolve()


def test_use_local_replaces_existing_symlink_by_copy(source: Path, tmp_path: Path) -> None:
    dest = tmp_path / "data.csv"
    use_local(source, dest, mode="symlink")
    use_local(source, dest, mode="copy")
    assert not dest.is_symlink() and dest.read_bytes() == PAYLOAD
    _assert_untouched(source)


def test_use_local_missing_source(tmp_path: Path) -> None:
    missing = tmp_path / "no_such_file.csv"
    with pytest.raises(DownloadError, match=re.escape(str(missing))):
        use_local(missing, tmp_path / "out.csv")
    assert not (tmp_path / "out.csv").exists()


def test_use_local_directory_source(tmp_path: Path) -> None:
    with pytest.raises(DownloadError, match="not a regular file"):
        use_local(tmp_path, tmp_path / "out.csv", mode="symlink")


def test_use_local_checksum_mismatch(source: Path, tmp_path: Path) -> None:
    dest = tmp_path / "out.csv"
    for mode in ("copy", "symlink"):
        with pytest.raises(ChecksumError) as info:
            use_local(source, dest, mode=mode, sha256="1" * 64)
        assert str(source) in str(info.value) and SHA in str(info.value)
        assert not dest.exists() and not dest.is_symlink()
    assert _leftovers(tmp_path) == ["src"]
    _assert_untouched(source)


def test_use_local_refuses_dest_equal_source(source: Path) -> None:
    with pytest.raises(DownloadError, match="source file"):
        use_local(source, source)
    _assert_untouched(source)


def test_use_local_bad_mode(source: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="mode"):
        use_local(source, tmp_path / "x", mode="hardlink")


def test_cli_path(source: Path, tmp_path: Path, capsys) -> None:
    dest = tmp_path / "link.csv"
    assert main(["--path", str(source), "--mode", "symlink", "--out", str(dest)]) == 0
    assert dest.is_symlink() and dest.read_bytes() == PAYLOAD
    missing = tmp_path / "gone.csv"
    assert main(["--path", str(missing), "--out", str(tmp_path / "y.csv")]) == 1
    errors = _error_lines(capsys.readouterr().err)
    assert len(errors) == 1 and str(missing) in errors[0]
    _assert_untouched(source)
