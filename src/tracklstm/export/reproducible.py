"""Exported files that are the same bytes wherever and however often they are made.

The same run, exported twice, must give byte-identical files: in two processes (whatever
Python's hash seed), and in two project folders. Otherwise a ``--forcerun export`` re-plans
every job downstream, and each file ships the path of the machine that made it. Left alone,
the exporters break both:

- TorchScript writes the ``Final`` constants of a module in the order of a Python ``set``
  (it follows the hash seed), a random ``.data/serialization_id``, and ``*.debug_pkl`` records
  that hold the absolute path and source text of every scripted file;
- torch.export records a ``stack_trace`` (absolute paths) on every graph node, which the
  ``.pt2`` archive stores and the ONNX exporter turns into metadata on every node.

``without_source_locations`` drops the stack traces from a program before it is saved or
converted; ``canonical_torch_archive`` rewrites a TorchScript archive: debug records dropped,
constants sorted by name, the serialization id derived from the content, entries stored
uncompressed at 64-byte-aligned offsets as PyTorch writes them, with a fixed date.
A TorchScript model without debug records loads and runs the same; its error messages keep
their text and lose only the Python source lines.

Not covered: the AOTInductor package (``model.aoti.pt2``, rule ``aoti``). It holds a native
library that this machine's compiler builds for this machine's CPU (``-march=native``), with the
paths of the compiler's cache and of torch's headers inside; it is rebuilt, not copied, where it
runs. Its program is exported without stack traces all the same.
"""

from __future__ import annotations

import hashlib
import io
import re
import struct
import zipfile

import torch

#: Offsets of stored data are aligned to this, as PyTorch's own writer does (for mmap).
ALIGNMENT = 64
#: The extra-field id PyTorch's writer pads with ("FB").
_PAD_ID = 0x4246
_DATE = (1980, 1, 1, 0, 0, 0)
_FINAL = re.compile(r"^\s+\w+ : Final\[")
_LOCAL_HEADER = 30  # bytes of a zip local file header before the name


def without_source_locations(
    program: torch.export.ExportedProgram,
) -> torch.export.ExportedProgram:
    """``program`` with no node's ``stack_trace`` (in place; returned for chaining)."""
    for module in program.graph_module.modules():
        graph = getattr(module, "graph", None)
        if isinstance(graph, torch.fx.Graph):
            for node in graph.nodes:
                node.meta.pop("stack_trace", None)
    return program


def _sorted_constants(code: str) -> str:
    """Each run of consecutive ``name : Final[T] = value`` lines sorted by name."""
    lines = code.split("\n")
    out: list[str] = []
    run: list[str] = []
    for line in [*lines, None]:
        if line is not None and _FINAL.match(line):
            run.append(line)
            continue
        out += sorted(run, key=lambda s: s.split(":", 1)[0].strip())
        run = []
        if line is not None:
            out.append(line)
    return "\n".join(out)


def _aligned_info(name: str, offset: int) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name, date_time=_DATE)
    info.compress_type = zipfile.ZIP_STORED
    info.create_system = 0
    start = offset + _LOCAL_HEADER + len(name.encode())
    pad = (-(start + 4)) % ALIGNMENT
    info.extra = struct.pack("<HH", _PAD_ID, pad) + b"Z" * pad
    return info


def canonical_torch_archive(data: bytes) -> bytes:
    """A TorchScript (``torch.jit.save``) archive rewritten as described in the module doc."""
    records: list[tuple[str, bytes]] = []
    id_name = None
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        for info in archive.infolist():
            name = info.filename
            if name.endswith(".debug_pkl"):
                continue
            body = archive.read(info)
            if "/code/" in name and name.endswith(".py"):
                body = _sorted_constants(body.decode()).encode()
            if name.endswith("/.data/serialization_id"):
                id_name = name
            records.append((name, body))
    if id_name is not None:
        digest = hashlib.sha256()
        for name, body in records:
            if name != id_name:
                digest.update(name.encode() + b"\0" + body)
        # The id's own format: decimal digits, 40 of them.
        serial = str(int(digest.hexdigest(), 16))[:40].rjust(40, "0").encode()
        records = [(n, serial if n == id_name else b) for n, b in records]
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_STORED) as archive:
        for name, body in records:
            archive.writestr(_aligned_info(name, out.tell()), body)
    return out.getvalue()
