"""The windows file as training reads it: its checks, and the train and validation sources.

``inspect_windows`` checks a file's layout, shapes and normalization without loading it. A
source (``WindowSource``) yields normalized batches on the device: ``DeviceWindows`` holds a
split in device memory and slices batches from a ``randperm`` drawn there; ``StreamedWindows``
reads chunks from the file for data larger than the device's memory. ``load_windows`` picks one.

A one-state model (``models.build.one_state``) serves a Kalman filter, which steps it from every
plane to the next; the challenge's windows have targets from plane 7 on only, so its sources
also hold the steps inside each track's first window (``inner_steps``: plane 1 to 2, ..., 5 to
6, as windows of the one state repeated). Without them the model extrapolates there: on the
demo it erred 6 to 10 times the field map's 6-12 um in x on those steps.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import h5py
import numpy as np
import torch

from tracklstm.constants import N_FEATURES
from tracklstm.data.checksums import verify_checksums
from tracklstm.files import sha256_file
from tracklstm.train.errors import TrainingInputError
from tracklstm.train.runtime import Dist

log = logging.getLogger("tracklstm.train")

#: Fraction of the free device memory the resident tensors may take (``data_on_device: auto``).
DEVICE_MEMORY_FRACTION = 0.5


@dataclass
class WindowsInfo:
    """What ``inspect_windows`` learned about a windows file (nothing loaded yet)."""

    path: Path
    window_length: int
    sizes: dict[str, int]
    norm_min: np.ndarray
    norm_max: np.ndarray
    fingerprint: str
    identity: dict[str, Any]
    #: Whether the sources min-max normalize the windows (the reference model); a model that
    #: works in physical units (``model.physical_units``) gets them as stored.
    normalized: bool = True
    #: Whether the sources add the steps inside each track's first window (``inner_steps``).
    inner_steps: bool = False


def _attr(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, bytes):
        return value.decode()
    return value


def inspect_windows(path: str | Path) -> WindowsInfo:
    """Check a windows file's layout, shapes and normalization; raise ``TrainingInputError``."""
    path = Path(path)
    if not path.is_file():
        raise TrainingInputError(f"{path}: no such file")
    try:
        h5 = h5py.File(path, "r")
    except OSError as err:
        raise TrainingInputError(f"{path}: not a readable HDF5 file ({err})") from None
    with h5:
        for split in ("train", "validation"):
            if split not in h5 or not isinstance(h5[split], h5py.Group):
                raise TrainingInputError(f"{path}: the split {split!r} is missing")
            for name in ("inputs", "targets"):
                if name not in h5[split] or not isinstance(h5[split][name], h5py.Dataset):
                    raise TrainingInputError(f"{path}: the dataset {split}/{name} is missing")
        for key in ("norm_min", "norm_max", "window_length"):
            if key not in h5.attrs:
                raise TrainingInputError(f"{path}: the attribute {key!r} is missing")
        attrs = {k: _attr(h5.attrs[k]) for k in h5.attrs}
        lo = np.asarray(attrs["norm_min"], dtype=np.float32).reshape(-1)
        hi = np.asarray(attrs["norm_max"], dtype=np.float32).reshape(-1)
        if lo.shape != (N_FEATURES,) or hi.shape != (N_FEATURES,):
            raise TrainingInputError(
                f"{path}: norm_min/norm_max have {lo.size}/{hi.size} values, expected {N_FEATURES}"
            )
        if not (np.isfinite(lo).all() and np.isfinite(hi).all() and (hi > lo).all()):
            raise TrainingInputError(f"{path}: norm_min/norm_max are not finite with max > min")
        length = attrs["window_length"]
        if not isinstance(length, int) or isinstance(length, bool) or length < 1:
            raise TrainingInputError(f"{path}: window_length attribute {length!r} is not >= 1")
        sizes = {}
        for split in ("train", "validation"):
            xs, ys = h5[split]["inputs"], h5[split]["targets"]
            if xs.ndim != 3 or xs.shape[1:] != (length, N_FEATURES):
                raise TrainingInputError(
                    f"{path}: {split}/inputs has shape {xs.shape}, expected "
                    f"(N, {length}, {N_FEATURES}) for windows of length {length}"
                )
            if ys.shape != (xs.shape[0], N_FEATURES):
                raise TrainingInputError(
                    f"{path}: {split}/targets has shape {ys.shape}, expected "
                    f"({xs.shape[0]}, {N_FEATURES})"
                )
            for ds in (xs, ys):
                if ds.dtype.kind != "f":
                    raise TrainingInputError(f"{path}: {ds.name} holds {ds.dtype}, not floats")
            if xs.shape[0] == 0:
                raise TrainingInputError(f"{path}: the split {split!r} holds no windows")
            sizes[split] = int(xs.shape[0])
        try:
            verify_checksums(path, h5, [f"{s}/{n}" for s in sizes for n in ("inputs", "targets")])
        except ValueError as err:
            raise TrainingInputError(str(err)) from None
    fingerprint = str(attrs.get("data_fingerprint", "")) or sha256_file(path)
    identity = {
        "data_fingerprint": fingerprint,
        "sizes": sizes,
        "norm_min": lo.tolist(),
        "norm_max": hi.tolist(),
        **{
            k: attrs.get(k)
            for k in (
                "window_length",
                "stride",
                "last_target_plane",
                "split_seed",
                "split_fractions",
            )
        },
    }
    return WindowsInfo(path, int(length), sizes, lo, hi, fingerprint, identity)


def inner_steps(inputs: np.ndarray, target_plane: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The plane-to-plane steps inside the first windows of ``inputs`` (N, L, 6) (those with
    target plane L: the origin and planes 1 to L-1): from plane j to j+1 for j = 1 .. L-2, each
    as a window of plane j's state repeated L times, with plane j+1's state as its target. The
    origin's step (through the central chamber and its endplate) is not a plane's step."""
    length = inputs.shape[1]
    first = inputs[target_plane == length]
    steps = range(1, length - 1)
    x = [np.repeat(first[:, j : j + 1], length, axis=1) for j in steps]
    y = [first[:, j + 1] for j in steps]
    if not x:
        return inputs[:0], inputs[:0, 0]
    return np.concatenate(x), np.concatenate(y)


def _target_planes(h5: h5py.File, path: Path, split: str) -> np.ndarray:
    if "target_plane" not in h5[split]:
        raise TrainingInputError(
            f"{path}: {split}/target_plane is missing (a one-state model needs it to find each "
            "track's first window); rebuild the windows file"
        )
    return h5[split]["target_plane"][...]


def _inner_count(target_plane: np.ndarray | None, length: int) -> int:
    """How many windows ``inner_steps`` makes of windows with these target planes (None: 0)."""
    if target_plane is None:
        return 0
    return int(np.sum(target_plane == length)) * max(length - 2, 0)


def _count_inner(info: WindowsInfo, split: str) -> int:
    """How many windows ``inner_steps`` adds to ``split`` (0 unless ``info.inner_steps``)."""
    if not info.inner_steps:
        return 0
    with h5py.File(info.path, "r") as h5:
        return _inner_count(_target_planes(h5, info.path, split), info.window_length)


def _normalize(a: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    return ((a - lo) / (hi - lo)).astype(np.float32, copy=False)


def _check_finite(a: np.ndarray, path: Path, name: str, first: int) -> None:
    bad = ~np.isfinite(a.reshape(len(a), -1)).all(axis=1)
    if bad.any():
        row = first + int(np.argmax(bad))
        raise TrainingInputError(
            f"{path}: {name} holds NaN or infinite values (first at window {row})"
        )


def _scan_chunks(ds: h5py.Dataset, chunk: int) -> Iterator[tuple[int, np.ndarray]]:
    for start in range(0, ds.shape[0], chunk):
        yield start, ds[start : start + chunk]


def check_windows_finite(info: WindowsInfo, chunk: int = 262144) -> None:
    """Read the train and validation windows chunk by chunk; stop at the first NaN or inf."""
    with h5py.File(info.path, "r") as h5:
        for split in ("train", "validation"):
            for name in ("inputs", "targets"):
                for start, a in _scan_chunks(h5[split][name], chunk):
                    _check_finite(a, info.path, f"{split}/{name}", start)


@dataclass
class Batch:
    """One step's share of a batch: ``n_global`` windows in the whole batch over all ranks."""

    x: torch.Tensor
    y: torch.Tensor
    n_global: int
    live: bool = True  # False: a stand-in window for a rank whose share is empty (weight 0)


def _rank_share(idx: torch.Tensor, dist: Dist) -> tuple[torch.Tensor, bool]:
    if dist.world == 1:
        return idx, True
    share = idx[dist.rank :: dist.world]
    if len(share) == 0:
        return idx[:1], False
    return share, True


class WindowSource(Protocol):
    """Normalized windows of one split, on the device, in batches."""

    n: int

    def train_batches(
        self, batch: int, gen: torch.Generator, dist: Dist, skip: int = 0
    ) -> Iterator[Batch]: ...

    def eval_batches(
        self, batch: int, dist: Dist
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]: ...

    def close(self) -> None: ...


class DeviceWindows:
    """A split held in device memory; batches are slices of a ``randperm`` drawn on the device."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self.x, self.y, self.n = x, y, len(x)

    @classmethod
    def load(
        cls, info: WindowsInfo, split: str, device: torch.device, chunk: int = 262144
    ) -> DeviceWindows:
        """Read, check and normalize a split chunk by chunk straight into device tensors (with
        ``info.inner_steps``, the steps inside the first windows after the file's windows)."""
        n, length = info.sizes[split], info.window_length
        with h5py.File(info.path, "r") as h5:
            planes = _target_planes(h5, info.path, split) if info.inner_steps else None
            total = n + _inner_count(planes, length)
            x = torch.empty((total, length, N_FEATURES), dtype=torch.float32, device=device)
            y = torch.empty((total, N_FEATURES), dtype=torch.float32, device=device)
            end = n  # the inner steps follow the file's windows, made from the inputs' chunks
            for name, dest in (("inputs", x), ("targets", y)):
                for start, a in _scan_chunks(h5[split][name], chunk):
                    _check_finite(a, info.path, f"{split}/{name}", start)
                    if planes is not None and name == "inputs":
                        extra = inner_steps(a, planes[start : start + len(a)])
                        for tail, e in zip((x, y), extra, strict=True):
                            if info.normalized:
                                e = _normalize(e, info.norm_min, info.norm_max)
                            tail[end : end + len(e)].copy_(torch.from_numpy(e))
                        end += len(extra[0])
                    if info.normalized:
                        a = _normalize(a, info.norm_min, info.norm_max)
                    dest[start : start + len(a)].copy_(torch.from_numpy(a))
        return cls(x, y)

    def train_batches(
        self, batch: int, gen: torch.Generator, dist: Dist, skip: int = 0
    ) -> Iterator[Batch]:
        perm = torch.randperm(self.n, generator=gen, device=gen.device)
        if perm.device != self.x.device:
            perm = perm.to(self.x.device)
        for start in range(skip * batch, self.n, batch):
            idx = perm[start : start + batch]
            share, live = _rank_share(idx, dist)
            yield Batch(self.x[share], self.y[share], len(idx), live)

    def eval_batches(self, batch: int, dist: Dist) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        x, y = self.x[dist.rank :: dist.world], self.y[dist.rank :: dist.world]
        for start in range(0, len(x), batch):
            yield x[start : start + batch].contiguous(), y[start : start + batch].contiguous()

    def close(self) -> None:
        pass


class StreamedWindows:
    """A split read from the HDF5 file in chunks, for data larger than the device's memory.

    Each epoch visits the chunks in a shuffled order and shuffles the windows within each chunk
    (the remainder that does not fill a batch is carried over into the next chunk).
    """

    def __init__(self, info: WindowsInfo, split: str, device: torch.device, chunk: int) -> None:
        self.info, self.device, self.chunk = info, device, int(chunk)
        self._file = h5py.File(info.path, "r")
        self._x, self._y = self._file[split]["inputs"], self._file[split]["targets"]
        self.rows = int(self._x.shape[0])
        self._planes = None
        if info.inner_steps:  # each chunk brings the steps inside its first windows
            self._planes = _target_planes(self._file, info.path, split)
        self.n = self.rows + _inner_count(self._planes, info.window_length)

    def _read(self, start: int, stop: int) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = self._x[start:stop], self._y[start:stop]
        if self._planes is not None:
            extra_x, extra_y = inner_steps(x, self._planes[start:stop])
            x, y = np.concatenate([x, extra_x]), np.concatenate([y, extra_y])
        if self.info.normalized:
            lo, hi = self.info.norm_min, self.info.norm_max
            x, y = _normalize(x, lo, hi), _normalize(y, lo, hi)
        return torch.from_numpy(x).to(self.device), torch.from_numpy(y).to(self.device)

    def train_batches(
        self, batch: int, gen: torch.Generator, dist: Dist, skip: int = 0
    ) -> Iterator[Batch]:
        n_chunks = math.ceil(self.rows / self.chunk)
        order = torch.randperm(n_chunks, generator=gen, device=gen.device).tolist()
        carry: tuple[torch.Tensor, torch.Tensor] | None = None
        step = 0
        for c in order:
            x, y = self._read(c * self.chunk, min(self.rows, (c + 1) * self.chunk))
            if carry is not None:
                x, y = torch.cat([carry[0], x]), torch.cat([carry[1], y])
            perm = torch.randperm(len(x), generator=gen, device=gen.device).to(self.device)
            full = len(x) // batch * batch
            for start in range(0, full, batch):
                if step >= skip:
                    share, live = _rank_share(perm[start : start + batch], dist)
                    yield Batch(x[share], y[share], batch, live)
                step += 1
            rest = perm[full:]
            carry = (x[rest], y[rest]) if len(rest) else None
        if carry is not None and step >= skip:
            idx = torch.arange(len(carry[0]), device=self.device)
            share, live = _rank_share(idx, dist)
            yield Batch(carry[0][share], carry[1][share], len(idx), live)

    def eval_batches(self, batch: int, dist: Dist) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for i, start in enumerate(range(0, self.rows, self.chunk)):
            if i % dist.world != dist.rank:
                continue
            x, y = self._read(start, min(self.rows, start + self.chunk))
            for s in range(0, len(x), batch):
                yield x[s : s + batch], y[s : s + batch]

    def close(self) -> None:
        self._file.close()


def _available_memory(device: torch.device) -> int:
    """Free bytes on a CUDA device, or the host's available memory for the CPU."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError):
        return 1 << 62


def read_split(info: WindowsInfo, split: str = "train") -> tuple[torch.Tensor, torch.Tensor]:
    """A split's inputs and targets as stored (physical units), checked, as CPU tensors (with
    ``info.inner_steps``, the steps inside the first windows after them)."""
    with h5py.File(info.path, "r") as h5:
        out = []
        for name in ("inputs", "targets"):
            a = h5[split][name][...]
            _check_finite(a, info.path, f"{split}/{name}", 0)
            out.append(a)
        if info.inner_steps:
            extra = inner_steps(out[0], _target_planes(h5, info.path, split))
            out = [np.concatenate([a, b]) for a, b in zip(out, extra, strict=True)]
    return torch.from_numpy(out[0]), torch.from_numpy(out[1])


def data_bytes(info: WindowsInfo) -> int:
    """Bytes the normalized train and validation tensors take (float32)."""
    per_window = (info.window_length + 1) * N_FEATURES * 4
    extra = _count_inner(info, "train") + _count_inner(info, "validation")
    return per_window * (info.sizes["train"] + info.sizes["validation"] + extra)


def load_windows(
    info: WindowsInfo, device: torch.device, on_device: bool | str = "auto", chunk: int = 262144
) -> tuple[WindowSource, WindowSource, str]:
    """Train and validation sources: device-resident when they fit (or when told), else streamed.

    Returns ``(train, validation, placement)`` with placement ``device`` or ``stream``.
    """
    if on_device == "auto":
        need, free = data_bytes(info), _available_memory(device)
        on_device = need <= DEVICE_MEMORY_FRACTION * free
        log.info(
            "data: %.2f GB, %.2f GB free on %s -> %s",
            need / 1e9,
            free / 1e9,
            device,
            "kept on the device" if on_device else "streamed from the file",
        )
    if on_device:
        train = DeviceWindows.load(info, "train", device, chunk)
        val = DeviceWindows.load(info, "validation", device, chunk)
        return train, val, "device"
    check_windows_finite(info, chunk)
    return (
        StreamedWindows(info, "train", device, chunk),
        StreamedWindows(info, "validation", device, chunk),
        "stream",
    )


def subset_batches(
    source: WindowSource, batch: int, cap: int, seed: int
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``source``'s windows in batches: all of them, or ``cap`` of them when there are more (a
    fixed random subset of a device-resident split, the same for the same ``seed``; the first
    ``cap`` of a streamed one, whose chunks hold tracks in random order). The covariance head
    learns on them, and the Jacobian term's windows are drawn from them."""
    if source.n <= cap:
        return list(source.eval_batches(batch, Dist()))
    if isinstance(source, DeviceWindows):
        gen = torch.Generator(device=source.x.device).manual_seed(seed + 2)
        idx = torch.randperm(source.n, generator=gen, device=source.x.device)[:cap]
        return [(source.x[i], source.y[i]) for i in idx.split(batch)]
    out, kept = [], 0
    for x, y in source.eval_batches(batch, Dist()):
        out.append((x[: cap - kept], y[: cap - kept]))
        kept += len(out[-1][0])
        if kept >= cap:
            break
    return out
