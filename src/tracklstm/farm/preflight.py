"""Jobs that can never start, named before they are submitted and while they wait.

A Slurm job that asks for more than any node of its partition has (CPUs, memory, GPUs of a
type), a time limit above the partition's, a partition that does not exist or is down, a QOS
or account the partition does not allow, waits in the queue for ever, and Snakemake says
nothing. Two checks, both run by the Snakefile under ``snakemake --profile slurm``:

- ``preflight`` (when Snakemake starts, ``-n`` included): every rule that the run may submit,
  with the resources the profile gives it (first attempt), against what ``scontrol show
  partition`` and ``scontrol show node`` report (and, where Slurm has an accounting database,
  the user's associations from ``sacctmgr``). Each problem is one line naming the rule, its
  request, what the partition offers and the variable to change; with any, Snakemake stops
  before it submits a job. ``TRACKLSTM_SLURM_PREFLIGHT=0`` skips it (sites where ``scontrol``
  or ``sacctmgr`` are restricted); it takes two ``scontrol`` calls, well under a second.
- ``PendingWatch`` (while the run goes on): every minute (at most), the run's jobs still
  pending (``squeue``); a job pending for ``TRACKLSTM_SLURM_PENDING_MINUTES`` (default 10) with
  a reason that waiting will not clear (``NEVER_CLEARS``) is reported as a warning line like the
  preflight's; jobs waiting for reasons that do clear (``Priority``, ``Resources``) get one
  short status line.
"""

from __future__ import annotations

import functools
import getpass
import math
import os
import re
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from tracklstm.farm.profile import GPU_RULES, SettingError, accounting_database, in_use

#: Pending reasons that waiting does not clear, and what to look at for each.
NEVER_CLEARS: dict[str, str] = {
    "PartitionConfig": "more CPUs, memory or GPUs than the partition's nodes have",
    "PartitionTimeLimit": "a time limit above the partition's",
    "PartitionNodeLimit": "more nodes than the partition allows",
    "PartitionDown": "the partition is down",
    "PartitionInactive": "the partition is inactive",
    "ReqNodeNotAvail": "nodes that are down, drained or reserved",
    "BadConstraints": "node features no node of the partition has",
    "InvalidAccount": "an account that does not exist or is not yours",
    "InvalidQOS": "a QOS that does not exist or is not yours",
    "AccountNotAllowed": "an account the partition does not allow",
    "QOSNotAllowed": "a QOS the partition does not allow",
    "QOSMaxCpuPerJobLimit": "more CPUs than the QOS allows a job",
    "QOSMaxMemoryPerJob": "more memory than the QOS allows a job",
    "QOSMaxGRESPerJob": "more GPUs than the QOS allows a job",
    "QOSMaxWallDurationPerJobLimit": "a time limit above the QOS's",
    "QOSMaxNodePerJobLimit": "more nodes than the QOS allows a job",
    "AssocMaxJobsLimit": "more jobs than your association allows",
    "AssocMaxWallDurationPerJobLimit": "a time limit above your association's",
}


@dataclass(frozen=True)
class Request:
    """What one rule's job asks Slurm for (Snakemake's resource names)."""

    rule: str
    cpus: int = 1
    mem_mb: int = 0
    runtime: int | None = None  # minutes
    gpus: int = 0
    gpu_model: str | None = None
    partition: str | None = None
    qos: str | None = None
    account: str | None = None
    constraint: str | None = None

    @classmethod
    def from_resources(cls, rule: str, res: dict[str, Any]) -> Request:
        def whole(key: str, default: int | None) -> int | None:
            value = res.get(key)
            return int(value) if isinstance(value, int | float) else default

        def text(key: str) -> str | None:
            value = res.get(key)
            return str(value) if isinstance(value, str) and value else None

        return cls(
            rule=rule,
            cpus=whole("cpus_per_task", None) or whole("_cores", 1) or 1,
            mem_mb=whole("mem_mb", 0) or 0,
            runtime=whole("runtime", None),
            gpus=whole("gpu", None) or whole("gpus", 0) or 0,
            gpu_model=text("gpu_model"),
            partition=text("slurm_partition"),
            qos=text("qos"),
            account=text("slurm_account"),
            constraint=text("constraint"),
        )


@dataclass
class Node:
    name: str
    cpus: int
    mem_mb: int
    gpus: dict[str, int]  # GPU type ("" when untyped) -> count
    features: set[str]
    partitions: set[str]


@dataclass
class Partition:
    name: str
    state: str
    default: bool
    max_minutes: int | None  # None: no limit
    nodes: list[Node] = field(default_factory=list)
    allow_qos: set[str] | None = None  # None: all
    allow_accounts: set[str] | None = None  # None: all


@dataclass
class SlurmState:
    partitions: dict[str, Partition]
    associations: set[tuple[str, str]] | None = None  # (account, partition or ""), or unknown


def _fields(line: str) -> dict[str, str]:
    """``Key=Value Key2=Value 2 ...`` (one ``-o`` line of scontrol) as a dict."""
    keys = list(re.finditer(r"(?:^|\s)([A-Za-z][\w:/]*)=", line))
    out = {}
    for i, match in enumerate(keys):
        end = keys[i + 1].start() if i + 1 < len(keys) else len(line)
        out[match.group(1)] = line[match.end() : end].strip()
    return out


def _minutes(limit: str) -> int | None:
    """Slurm's ``[days-]hours:minutes:seconds`` (or UNLIMITED/INFINITE) in whole minutes."""
    if limit.upper() in ("UNLIMITED", "INFINITE", "NONE", ""):
        return None
    days, _, rest = limit.rpartition("-")
    parts = [int(p) for p in rest.split(":")]
    h, m, s = ([0] * (3 - len(parts)) + parts) if len(parts) < 3 else parts
    if len(parts) == 1:  # bare minutes
        h, m, s = 0, parts[0], 0
    return (int(days or 0) * 24 + h) * 60 + m + (1 if s else 0)


def _gres(text: str) -> dict[str, int]:
    """``gpu:a100:4(S:0-1),gpu:2`` -> {"a100": 4, "": 2}."""
    gpus: dict[str, int] = {}
    for item in text.split(","):
        parts = re.sub(r"\(.*?\)", "", item).split(":")
        if parts[0] != "gpu" or len(parts) < 2:
            continue
        kind, count = (parts[1], parts[2]) if len(parts) > 2 else ("", parts[1])
        digits = re.match(r"\d+", count)
        gpus[kind] = gpus.get(kind, 0) + (int(digits.group()) if digits else 0)
    return gpus


def _names(value: str) -> set[str] | None:
    return None if value in ("ALL", "") else set(value.split(","))


def _run(command: list[str]) -> str:
    done = subprocess.run(command, capture_output=True, text=True, timeout=20)
    if done.returncode != 0:
        raise OSError(f"{' '.join(command)}: {done.stderr.strip() or done.returncode}")
    return done.stdout


def slurm_state(run: Callable[[list[str]], str] = _run) -> SlurmState:
    """Partitions and their nodes as Slurm reports them; associations where it keeps them."""
    nodes = {}
    for line in run(["scontrol", "show", "node", "-o"]).splitlines():
        f = _fields(line)
        if "NodeName" not in f:
            continue
        features = f.get("AvailableFeatures", "")
        nodes[f["NodeName"]] = Node(
            name=f["NodeName"],
            cpus=int(f.get("CPUTot", "0") or 0),
            mem_mb=int(f.get("RealMemory", "0") or 0),
            gpus=_gres(f.get("Gres", "")),
            features=set() if features in ("(null)", "") else set(features.split(",")),
            partitions=set(f.get("Partitions", "").split(",")),
        )
    partitions = {}
    for line in run(["scontrol", "show", "partition", "-o"]).splitlines():
        f = _fields(line)
        if "PartitionName" not in f:
            continue
        members = [n for n in nodes.values() if f["PartitionName"] in n.partitions]
        partitions[f["PartitionName"]] = Partition(
            name=f["PartitionName"],
            state=f.get("State", "UP"),
            default=f.get("Default") == "YES",
            max_minutes=_minutes(f.get("MaxTime", "UNLIMITED")),
            nodes=members,
            allow_qos=_names(f.get("AllowQos", "ALL")),
            allow_accounts=_names(f.get("AllowAccounts", "ALL")),
        )
    return SlurmState(partitions, _associations(run))


def _associations(run: Callable[[list[str]], str]) -> set[tuple[str, str]] | None:
    """The user's (account, partition) associations, or None without an accounting database."""
    if not accounting_database():
        return None
    try:
        out = run(["sacctmgr", "-nP", "show", "assoc", f"user={getpass.getuser()}",
                   "format=account,partition"])  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return None
    return {tuple(line.split("|")[:2]) for line in out.splitlines() if "|" in line}  # type: ignore[misc]


# --------------------------------------------------------------------------------------------
# The preflight


def variable(rule: str, what: str) -> str:
    """What to set to change ``what`` (a Request field) of ``rule`` under the profile."""
    gpu = rule in GPU_RULES
    prefix = "TRACKLSTM_SLURM_GPU_" if gpu else "TRACKLSTM_SLURM_"
    names = {
        "partition": f"set {prefix}PARTITION",
        "qos": f"set {prefix}QOS",
        "constraint": f"set {prefix}CONSTRAINT",
        "account": "set TRACKLSTM_SLURM_ACCOUNT",
        "gpu_model": "set TRACKLSTM_SLURM_GPU_MODEL",
        "gpus": "set TRACKLSTM_SLURM_GPUS" if rule == "train" else f"set {prefix}PARTITION",
        "cpus": "set TRACKLSTM_SLURM_TRAIN_CPUS" if rule == "train" else f"--set-threads {rule}=N",
        "runtime": "set TRACKLSTM_SLURM_TRAIN_RUNTIME"
        if rule == "train"
        else f"--set-resources {rule}:runtime=N",
        "mem_mb": f"--set-resources {rule}:mem_mb=N",
    }
    return names[what]


def _features_match(expression: str, features: set[str]) -> bool | None:
    """Whether a node with ``features`` satisfies ``expression`` (None: too complex to say)."""
    if re.search(r"[\[\]()*]", expression):
        return None
    return any(
        all(term in features for term in re.split(r"[&,]", alternative))
        for alternative in expression.split("|")
    )


def _gpus_on(node: Node, model: str | None) -> int:
    return node.gpus.get(model, 0) if model else sum(node.gpus.values())


def problems(requests: Iterable[Request], state: SlurmState) -> list[str]:
    """One line per request no node can satisfy, each naming what to change."""
    lines: list[str] = []
    default = next((p for p in state.partitions.values() if p.default), None)
    for req in requests:
        rule, fix = req.rule, functools.partial(variable, req.rule)
        part = state.partitions.get(req.partition) if req.partition else default
        if part is None:
            known = ", ".join(sorted(state.partitions)) or "none"
            asked = f"partition {req.partition}" if req.partition else "no partition"
            lines.append(f"{rule} asks {asked}; Slurm's partitions are {known}: {fix('partition')}")
            continue
        name = f"partition {part.name}"
        if not part.state.startswith("UP"):
            lines.append(f"{rule} asks {name}, which is {part.state}: {fix('partition')}")
        limit = part.max_minutes
        if req.runtime is not None and limit is not None and req.runtime > limit:
            lines.append(
                f"{rule} asks a time limit of {req.runtime} min; {name} allows {limit} min: "
                f"{fix('runtime')}"
            )
        if req.qos and part.allow_qos is not None and req.qos not in part.allow_qos:
            allowed = ", ".join(sorted(part.allow_qos))
            lines.append(f"{rule} asks QOS {req.qos}; {name} allows {allowed}: {fix('qos')}")
        if req.account:
            if part.allow_accounts is not None and req.account not in part.allow_accounts:
                allowed = ", ".join(sorted(part.allow_accounts))
                lines.append(
                    f"{rule} asks account {req.account}; {name} allows {allowed}: {fix('account')}"
                )
            elif state.associations is not None and not (
                {(req.account, ""), (req.account, part.name)} & state.associations
            ):
                lines.append(
                    f"{rule} asks account {req.account}; you have no association with it "
                    f"for {name} (sacctmgr show assoc): {fix('account')}"
                )
        lines += _node_problems(req, part, fix)
    return lines


def _node_problems(req: Request, part: Partition, fix: Callable[[str], str]) -> list[str]:
    """Requests no node of ``part`` satisfies: each dimension alone, then all together."""
    rule, name, nodes = req.rule, f"partition {part.name}'s nodes", part.nodes
    if not nodes:
        return [f"{req.rule} asks partition {part.name}, which has no nodes: {fix('partition')}"]
    lines = []
    most_cpus = max(n.cpus for n in nodes)
    if req.cpus > most_cpus:
        lines.append(
            f"{rule} asks {req.cpus} CPUs per task; {name} have {most_cpus}: {fix('cpus')}"
        )
    most_mem = max(n.mem_mb for n in nodes)
    if req.mem_mb > most_mem:
        lines.append(
            f"{rule} asks {req.mem_mb} MB of memory; {name} have at most {most_mem} MB: "
            f"{fix('mem_mb')}"
        )
    if req.gpus > 0:
        most_gpus = max(_gpus_on(n, req.gpu_model) for n in nodes)
        if req.gpus > most_gpus:
            kinds = sorted({k or "untyped" for n in nodes for k in n.gpus})
            offers = f"GPU types {', '.join(kinds)}" if kinds else "no GPU"
            asked = f"GPU(s) of type {req.gpu_model}" if req.gpu_model else "GPU(s)"
            if req.gpu_model:
                what = f"{fix('gpu_model')} (or {fix('gpus')})"
            else:
                what = fix("gpus") + (" to 0 (train on CPUs)" if rule == "train" else "")
            lines.append(f"{rule} asks {req.gpus} {asked}; {name} have {offers}: {what}")
    matches = {
        n.name: _features_match(req.constraint, n.features) if req.constraint else True
        for n in nodes
    }
    if req.constraint and not any(m is not False for m in matches.values()):
        have = sorted({f for n in nodes for f in n.features}) or ["none"]
        lines.append(
            f"{rule} asks node features {req.constraint}; {name} have {', '.join(have)}: "
            f"{fix('constraint')}"
        )
    if not lines and not any(
        n.cpus >= req.cpus
        and n.mem_mb >= req.mem_mb
        and _gpus_on(n, req.gpu_model) >= req.gpus
        and matches[n.name] is not False
        for n in nodes
    ):
        lines.append(
            f"{rule} asks {req.cpus} CPUs, {req.mem_mb} MB, {req.gpus} GPUs"
            f"{' with ' + req.constraint if req.constraint else ''} on one node; no node of "
            f"partition {part.name} has them all: {fix('cpus')}, or {fix('partition')}"
        )
    return lines


def rule_requests(workflow: Any, names: Iterable[str]) -> list[Request]:
    """What each of the rules ``names`` asks for, unless it is local: the resources Snakemake
    gives its first attempt (they depend on no wildcard in this workflow)."""
    from snakemake.iocontainers import InputFiles, Wildcards

    out = []
    local = set(workflow._localrules)  # workflow.is_local() says "all" before execution starts
    for rule in map(workflow.get_rule, names):
        if rule.name in local or rule.norun:
            continue
        res = rule.expand_resources(Wildcards(), InputFiles(), 1)
        out.append(Request.from_resources(rule.name, dict(res)))
    return out


def wanted() -> bool:
    """Whether to run the preflight: under the Slurm profile, in the snakemake that submits
    (not inside a job), unless TRACKLSTM_SLURM_PREFLIGHT=0."""
    switch = os.environ.get("TRACKLSTM_SLURM_PREFLIGHT", "1").strip().lower()
    return in_use() and switch not in ("0", "no", "false", "off")


def preflight(workflow: Any, names: Iterable[str], state: SlurmState | None = None) -> list[str]:
    """The problems of the requests of the rules ``names`` (see the module doc); [] when Slurm
    cannot be asked (the submissions then say what is wrong)."""
    try:
        state = state or slurm_state()
    except (OSError, subprocess.SubprocessError):
        return []
    return problems(rule_requests(workflow, names), state)


# --------------------------------------------------------------------------------------------
# While the run goes on


def pending_minutes() -> float:
    """TRACKLSTM_SLURM_PENDING_MINUTES (default 10): how long a job waits before it is named."""
    raw = os.environ.get("TRACKLSTM_SLURM_PENDING_MINUTES", "10").strip()
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not value > 0:
        raise SettingError(f"TRACKLSTM_SLURM_PENDING_MINUTES={raw!r}: not a number of minutes")
    return value


@dataclass
class PendingWatch:
    """A daemon thread that names the run's jobs pending for longer than ``minutes``.

    ``log(level, line)`` receives the lines (``warning`` for reasons that never clear, ``info``
    for the short status line). Jobs are those of this user named ``<prefix>_...`` and submitted
    after the watch started; their Slurm comment (the rule and its wildcards) names them.
    """

    log: Callable[[str, str], None]
    minutes: float = 10.0
    prefix: str = "tracklstm"
    run: Callable[[list[str]], str] = _run
    started: float = field(default_factory=time.time)
    reported: set[str] = field(default_factory=set)

    @property
    def interval(self) -> float:
        return min(60.0, max(2.0, self.minutes * 60 / 4))

    def start(self) -> PendingWatch:
        threading.Thread(target=self._loop, name="pending-watch", daemon=True).start()
        return self

    def _loop(self) -> None:
        while True:  # a daemon thread: it ends with snakemake
            time.sleep(self.interval)
            try:
                self.check()
            except (OSError, subprocess.SubprocessError, ValueError):
                continue  # Slurm busy or restarting: try again next time
            except Exception as err:  # a thread's error is otherwise lost: say it, and stop
                self.log("warning", f"the watch of pending Slurm jobs stopped: {err!r}")
                return

    def pending(self) -> list[tuple[str, str, str, float]]:
        """(job id, comment, reason, seconds pending) of this run's pending jobs."""
        out = self.run(["squeue", "--me", "-h", "-t", "PENDING", "-o", "%i|%j|%k|%r|%V"])
        now, jobs = time.time(), []
        for line in out.splitlines():
            job, name, comment, reason, submitted = (line.split("|") + [""] * 5)[:5]
            if not name.startswith(self.prefix):
                continue
            try:
                since = time.mktime(time.strptime(submitted.strip(), "%Y-%m-%dT%H:%M:%S"))
            except ValueError:
                continue
            if since + 1 >= self.started:
                jobs.append((job.strip(), comment.strip(), reason.strip(), now - since))
        return jobs

    def check(self) -> list[str]:
        """Report the jobs pending too long (each stuck job once); return the lines."""
        lines, waiting = [], Counter()
        for job, comment, reason, seconds in self.pending():
            if seconds < self.minutes * 60:
                continue
            key = reason.split(",")[0].strip("() ")
            if key in NEVER_CLEARS:
                if job not in self.reported:
                    self.reported.add(job)
                    line = (
                        f"Slurm job {job} ({comment or 'rule ?'}) has waited "
                        f"{seconds / 60:.1f} min with reason {key}, which waiting does not "
                        f"clear: it asks {NEVER_CLEARS[key]}; see `scontrol show job {job}`, "
                        f"cancel it (`scancel {job}`), change the setting "
                        "(docs/farm.md, 'Jobs that can never start') and run again"
                    )
                    self.log("warning", line)
                    lines.append(line)
            else:
                waiting[key or "None"] += 1
        if waiting:
            reasons = ", ".join(f"{n} for {r}" for r, n in waiting.most_common())
            line = f"{sum(waiting.values())} Slurm job(s) still pending: {reasons}"
            self.log("info", line)
            lines.append(line)
        return lines


def snakemake_log(level: str, line: str) -> None:
    """Write ``line`` to Snakemake's log (its terminal and .snakemake/log) at ``level``."""
    from snakemake.logging import logger

    getattr(logger, level)(line)
