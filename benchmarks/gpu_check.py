"""GPU check: the CUDA tests and the training throughput of one GPU machine, in one run.

The entry point is ``bash benchmarks/gpu_check.sh``: it finds or makes the Python environment
and runs this file with it, from the repository root. The steps, each in its own process with
its own time limit inside a total budget (8 minutes by default); a step that fails or runs out
of time is recorded and the next one runs:

1. the machine: GPUs (nvidia-smi), torch, CUDA, cuDNN and NCCL versions, the compilers;
2. the CUDA tests: ``pytest -m cuda tests/test_cuda.py tests/test_cpp.py tests/test_aoti.py
   -k cuda`` (the AOTInductor package for CUDA among them);
3. the training throughput: ``benchmarks/train_throughput.py --device cuda --full-size`` with
   the TF32, bf16 and CUDA-graph variants, and the projected time of the full-size 100-epoch
   training of each, against the target (2 minutes on one H100-class GPU).

Then one table on stdout and one JSON, ``benchmarks/results/gpu_check.json`` (the machine, the
versions, every test's outcome and measured differences, the throughput, the projections and
the wall times). Exit status: 0 when every CUDA test passed or was skipped, 1 when one failed or
the tests did not finish, 2 when torch cannot use a CUDA GPU here, 3 when only the throughput
step failed.

``--cpu-dry-run``: the same steps on a machine without a GPU, at tiny sizes, in under a minute
(the CUDA tests skip; the throughput runs on the CPU), writing its JSON to the temporary folder,
to check this script itself.

Standard library only: it runs, and reports, even where the project's packages are missing.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import xml.etree.ElementTree as ET
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger("gpu_check")

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "gpu_check.json"
DRY_RUN_RESULTS = Path(tempfile.gettempdir()) / "tracklstm_gpu_check_dryrun.json"
#: The full-size 100-epoch training should take at most this long on one H100-class GPU.
TARGET_100_EPOCHS_S = 120.0
#: As in train_throughput.py: the real set's training and validation windows.
FULL_TRAIN, FULL_VAL = 2_802_254, 350_282
VARIANTS = "tf32,bf16,graphs,bf16+graphs"
TEST_FILES = ("tests/test_cuda.py", "tests/test_cpp.py", "tests/test_aoti.py")
PYPROJECT = ROOT / "pyproject.toml"
LABELS = {
    "a_trainer": "fp32 (trainer)",
    "b_naive_dataloader": "naive DataLoader port",
    "c_bare_loop": "fp32 bare loop (limit)",
}


def required_distributions(pyproject: Path = PYPROJECT) -> list[str]:
    """What the package, its tests and this check need (distribution names): pyproject.toml's
    dependencies and its ``test`` extra, the one list of them."""
    import tomllib

    project = tomllib.loads(pyproject.read_text())["project"]
    specs = [*project["dependencies"], *project["optional-dependencies"]["test"]]
    return [re.split(r"[\s<>=!~;\[]", spec, maxsplit=1)[0] for spec in specs]


ENV_SCRIPT = r"""
import importlib.metadata, json, platform, sys
info = {"python": platform.python_version(), "executable": sys.executable}

def installed(name):
    try:
        importlib.metadata.distribution(name)
    except importlib.metadata.PackageNotFoundError:
        return False
    return True

info["missing_packages"] = [d for d in DISTRIBUTIONS if not installed(d)]
try:
    import torch
except Exception as err:
    info["torch_error"] = f"{type(err).__name__}: {err}"
    print(json.dumps(info)); sys.exit(0)
info.update(torch=torch.__version__, cuda=torch.version.cuda, cuda_available=False)
info["torch_cmake_dir"] = torch.utils.cmake_prefix_path
try:
    info["cuda_available"] = torch.cuda.is_available()
    if info["cuda_available"]:
        info["device_count"] = torch.cuda.device_count()
        info["cudnn"] = torch.backends.cudnn.version()
        try:
            info["nccl"] = ".".join(map(str, torch.cuda.nccl.version()))
        except Exception as err:
            info["nccl"] = f"unknown ({err})"
        info["devices"] = []
        for i in range(info["device_count"]):
            p = torch.cuda.get_device_properties(i)
            info["devices"].append({
                "name": p.name, "capability": f"{p.major}.{p.minor}",
                "memory_gib": round(p.total_memory / 2**30, 1),
                "multiprocessors": p.multi_processor_count,
            })
    elif torch.version.cuda is None:
        info["reason"] = f"torch {torch.__version__} is a CPU-only build"
    else:
        info["reason"] = f"torch {torch.__version__} (CUDA {torch.version.cuda}) sees no usable GPU"
except Exception as err:
    info["reason"] = f"{type(err).__name__}: {err}"
print(json.dumps(info))
"""

ROUND_LINE = re.compile(r"round (\d+) (\S+)\s+([\d.]+) s\s+([\d.]+) samples/s")
TEST_LINE = re.compile(r"^(tests/\S+::\S+) (PASSED|FAILED|SKIPPED|ERROR|XFAIL|XPASS)\b")


# --------------------------------------------------------------------------------------------
# Steps: processes with a time limit


@dataclass
class Step:
    """One step's process: its command, exit code, whether it ran out of time, and its output."""

    name: str
    command: list[str]
    timeout_s: float
    returncode: int | None = None
    timed_out: bool = False
    seconds: float = 0.0
    error: str | None = None
    output_tail: str = ""
    log_file: str = ""

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and not self.timed_out and self.error is None


def run_step(name: str, command: list[str], timeout_s: float, log_dir: Path, env: dict) -> Step:
    """Run ``command`` in its own process group; its output goes to a log file and, line by
    line, to stderr. Past ``timeout_s`` the whole group is stopped (SIGTERM, then SIGKILL)."""
    step = Step(name, command, round(timeout_s, 1))
    path = log_dir / f"{name}.log"
    step.log_file = str(path)
    if timeout_s < 5:
        step.error = "no time left in the budget"
        log.warning("%s: skipped, no time left in the budget", name)
        return step
    log.info("%s: %s (time limit %.0f s)", name, " ".join(command), timeout_s)
    t0 = time.monotonic()
    with open(path, "w", encoding="utf-8", errors="replace") as fh:
        try:
            proc = subprocess.Popen(
                command,
                cwd=ROOT,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                errors="replace",
                start_new_session=True,
            )
        except OSError as err:
            step.error = f"could not start: {err}"
            log.error("%s: %s", name, step.error)
            return step

        def pump() -> None:
            assert proc.stdout is not None
            for line in proc.stdout:
                fh.write(line)
                fh.flush()
                sys.stderr.write(f"  | {line}")

        reader = threading.Thread(target=pump, daemon=True)
        reader.start()
        try:
            step.returncode = proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            step.timed_out = True
            log.error("%s: still running after %.0f s; stopping it", name, timeout_s)
            stop_group(proc)
        reader.join(timeout=10)
    step.seconds = round(time.monotonic() - t0, 2)
    step.output_tail = path.read_text(errors="replace")[-6000:]
    log.info(
        "%s: %s in %.1f s",
        name,
        "timed out" if step.timed_out else f"exit code {step.returncode}",
        step.seconds,
    )
    return step


def stop_group(proc: subprocess.Popen[str]) -> None:
    """SIGTERM to the process group this step started, then SIGKILL after 10 s."""
    for sig, wait in ((signal.SIGTERM, 10), (signal.SIGKILL, 10)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


def quick(command: list[str], timeout_s: float = 15) -> str | None:
    """A short command's output (stdout and stderr), or None when it cannot run."""
    if shutil.which(command[0]) is None:
        return None
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s)
    except (OSError, subprocess.SubprocessError) as err:
        return f"failed: {err}"
    return (done.stdout + done.stderr).strip()


# --------------------------------------------------------------------------------------------
# The machine


def machine_info(python: str, env: dict, log_dir: Path, timeout_s: float) -> tuple[dict, Step]:
    """GPUs, versions and tools; the torch facts come from a process of the checked Python."""
    script = f"DISTRIBUTIONS = {required_distributions()!r}\n{ENV_SCRIPT}"
    step = run_step("environment", [python, "-c", script], timeout_s, log_dir, env)
    info: dict[str, Any] = {}
    for line in reversed(step.output_tail.splitlines()):
        if line.startswith("{"):
            try:
                info = json.loads(line)
                break
            except ValueError:
                continue
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in _read("/proc/cpuinfo").splitlines()
            if line.startswith("model name")
        ),
        platform.processor() or platform.machine(),
    )
    nvcc = quick(["nvcc", "--version"])
    info.update(
        host=platform.node(),
        platform=platform.platform(),
        cpu=cpu,
        cpu_cores=os.cpu_count(),
        nvidia_smi=quick(["nvidia-smi", "-L"]),
        nvidia_smi_query=quick(
            [
                "nvidia-smi",
                "--query-gpu=index,name,driver_version,memory.total,clocks.max.sm,power.limit",
                "--format=csv,noheader",
            ]
        ),
        nvcc=next((x for x in nvcc.splitlines() if "release" in x), nvcc) if nvcc else None,
        cmake=first_line(quick(["cmake", "--version"])),
        cxx=first_line(quick(["c++", "--version"])),
    )
    return info, step


def first_line(text: str | None) -> str | None:
    return text.splitlines()[0] if text else None


def _read(path: str) -> str:
    try:
        return Path(path).read_text(errors="replace")
    except OSError:
        return ""


# --------------------------------------------------------------------------------------------
# The tests


@dataclass
class Case:
    name: str
    outcome: str  # passed, failed, error, skipped
    seconds: float = 0.0
    message: str = ""
    properties: dict[str, str] = field(default_factory=dict)


RANK = {"passed": 0, "skipped": 1, "failed": 2, "error": 3}


def read_junit(path: Path) -> list[Case]:
    """The test cases of a JUnit XML report (a case reported twice keeps its worst outcome)."""
    cases: dict[str, Case] = {}
    for tc in ET.parse(path).getroot().iter("testcase"):
        module = (tc.get("classname") or "").replace(".", "/")
        name = f"{module}.py::{tc.get('name')}" if module else str(tc.get("name"))
        outcome, message = "passed", ""
        for tag in ("error", "failure", "skipped"):
            node = tc.find(tag)
            if node is not None:
                outcome = {"failure": "failed"}.get(tag, tag)
                message = (node.get("message") or node.text or "").strip()
                break
        props = {p.get("name", ""): p.get("value", "") for p in tc.iter("property")}
        case = Case(name, outcome, float(tc.get("time") or 0.0), message[:500], props)
        old = cases.get(name)
        if old is None or RANK[outcome] > RANK[old.outcome]:
            if old is not None:
                case.properties = {**old.properties, **case.properties}
            cases[name] = case
    return list(cases.values())


def read_test_log(text: str) -> list[Case]:
    """The outcomes in ``pytest -v`` lines, for a run that was stopped before its report."""
    cases: dict[str, Case] = {}
    words = {"XFAIL": "skipped", "XPASS": "passed"}
    for line in text.splitlines():
        m = TEST_LINE.match(line.strip())
        if m:
            outcome = words.get(m[2], m[2].lower())
            old = cases.get(m[1])
            if old is None or RANK[outcome] > RANK[old.outcome]:
                cases[m[1]] = Case(m[1], outcome)
    return list(cases.values())


def forget_stale_cpp_build(machine: dict) -> None:
    """Make test_cpp's fixture configure cpp/build anew when its CMake cache holds another
    torch than this Python's (say a CPU build): CMake keeps a cached Torch_DIR."""
    cache = ROOT / "cpp" / "build" / "CMakeCache.txt"
    want = machine.get("torch_cmake_dir")
    if not cache.exists() or not want:
        return
    found = re.search(r"^Torch_DIR:PATH=(.*)$", _read(str(cache)), re.MULTILINE)
    if found is None or Path(found[1]).resolve() == (Path(want) / "Torch").resolve():
        return
    log.warning("cpp/build was configured for %s; configuring it anew for %s", found[1], want)
    cache.unlink()
    shutil.rmtree(cache.parent / "CMakeFiles", ignore_errors=True)


def cpp_configure(machine: dict, env: dict, work: Path, timeout_s: float) -> str | None:
    """Configure cpp/build as test_cpp's fixture does; the reason when CMake finds no usable
    CUDA toolkit for a CUDA build of libtorch (a limit of the machine, not of the project)."""
    prefix = machine.get("torch_cmake_dir")
    if not prefix or shutil.which("cmake") is None or shutil.which("c++") is None:
        return None  # the fixture skips, naming what is missing
    command = ["cmake", "-S", "cpp", "-B", "cpp/build", f"-DCMAKE_PREFIX_PATH={prefix}"]
    step = run_step("cpp_configure", command, timeout_s, work, env)
    text = step.output_tail
    if not step.ok and ("cannot find the CUDA libraries" in text or "CUDA cannot be found" in text):
        log.warning("the C++ program cannot be built against this CUDA libtorch here")
        return "CMake finds no usable CUDA toolkit for this CUDA build of libtorch"
    return None


def run_tests(
    python: str, env: dict, work: Path, timeout_s: float, deselect: dict[str, str]
) -> dict:
    junit = work / "junit.xml"
    command = [
        python, "-m", "pytest", "-m", "cuda", *TEST_FILES, "-k", "cuda", "-v",
        "-p", "no:cacheprovider", f"--junitxml={junit}", "-o", "junit_family=xunit1",
        "-o", "faulthandler_timeout=120",
    ]  # fmt: skip
    for item in deselect:
        command += ["--deselect", item]
    step = run_step("tests", command, timeout_s, work, env)
    cases, source = [], "none"
    if junit.exists():
        try:
            cases, source = read_junit(junit), "junit"
        except ET.ParseError as err:
            log.warning("tests: the JUnit report cannot be read (%s)", err)
    if not cases:
        cases = read_test_log(Path(step.log_file).read_text(errors="replace"))
        source = "log" if cases else "none"
    counts = {k: sum(c.outcome == k for c in cases) for k in RANK}
    # pytest: 0 all passed, 1 some failed; anything else (or no cases) means the run broke
    finished = not step.timed_out and step.returncode in (0, 1) and bool(cases)
    return {
        "step": asdict(step),
        "source": source,
        "counts": counts,
        "cases": [asdict(c) for c in cases],
        "deselected": deselect,
        "finished": finished,
        "passed": finished and counts["failed"] == 0 and counts["error"] == 0,
    }


# --------------------------------------------------------------------------------------------
# The throughput


def run_throughput(
    python: str, env: dict, work: Path, timeout_s: float, dry_run: bool, rounds: int, variants: str
) -> dict:
    out = work / "train_throughput.json"
    command = [python, "benchmarks/train_throughput.py", "--skip-naive", "--rounds", str(rounds)]
    command += ["--variants", variants, "--out", str(out)]
    if dry_run:
        # one thread: two OpenMP threads on a shared 2-core machine can run ten times slower
        command += ["--device", "cpu", "--windows", "2000", "--threads", "1"]
    else:
        command += ["--device", "cuda", "--full-size"]
    step = run_step("throughput", command, timeout_s, work, env)
    record, source = None, "none"
    if out.exists():
        try:
            results = json.loads(out.read_text())
            record = results.get("cpu" if dry_run else "cuda")
        except ValueError as err:
            log.warning("throughput: %s cannot be read (%s)", out, err)
    rates: dict[str, float] = {}
    projected: dict[str, float] = {}
    how = "measured by train_throughput.py"
    if record:
        source = "json"
        rates = dict(record.get("samples_per_s_median", {}))
        projected = dict(record.get("projected_100_epochs_s", {}))
        if not projected:  # on the CPU the benchmark projects nothing: scale its validation pass
            n_val = max(1, int(record["windows"]) // 8)
            val_s = float(record.get("validation_seconds", 0.0)) * FULL_VAL / n_val
            projected = {k: round(100 * (FULL_TRAIN / r + val_s), 1) for k, r in rates.items()}
            how = "estimated here: 100 x (full-size windows / rate + validation, scaled up)"
    else:  # stopped or failed before its JSON: the rounds it logged
        per_round: dict[str, list[float]] = {}
        for m in ROUND_LINE.finditer(Path(step.log_file).read_text(errors="replace")):
            per_round.setdefault(m[2], []).append(float(m[4]))
        if per_round:
            source = "log"
            rates = {k: round(statistics.median(v), 1) for k, v in per_round.items()}
            projected = {k: round(100 * FULL_TRAIN / r, 1) for k, r in rates.items()}
            how = "from the logged rounds, training only (the validation pass was not measured)"
    variants_out = {
        name: {
            "label": label(name),
            "samples_per_s": rates[name],
            "projected_100_epochs_s": projected.get(name),
            "target_met": projected.get(name) is not None
            and projected[name] <= TARGET_100_EPOCHS_S,
        }
        for name in rates
    }
    trainers = {k: v for k, v in variants_out.items() if k.startswith("a_trainer")}
    best = min(
        trainers, key=lambda k: trainers[k]["projected_100_epochs_s"] or float("inf"), default=None
    )
    return {
        "step": asdict(step),
        "source": source,
        "projection": how,
        "target_100_epochs_s": TARGET_100_EPOCHS_S,
        "variants": variants_out,
        "best": best,
        "target_met": None if best is None else trainers[best]["target_met"],
        "record": record,
        "ok": step.ok and source == "json",
    }


def label(runner: str) -> str:
    if runner in LABELS:
        return LABELS[runner]
    return runner.removeprefix("a_trainer_")


# --------------------------------------------------------------------------------------------
# The report


def summary_table(report: dict) -> str:
    env, tests, bench = report["machine"], report.get("tests"), report.get("throughput")
    lines = [""]
    mode = "CPU DRY RUN (tiny sizes; checks the script)" if report["dry_run"] else "CUDA"
    gpus = ", ".join(d["name"] for d in env.get("devices", [])) or "no CUDA GPU"
    lines.append(f"GPU check, {mode}: {gpus}")
    lines.append(
        f"  torch {env.get('torch')}, CUDA {env.get('cuda')}, cuDNN {env.get('cudnn')}, "
        f"NCCL {env.get('nccl')}, Python {env.get('python')}; host CPU {env.get('cpu')} "
        f"x{env.get('cpu_cores')}"
    )
    if env.get("nvidia_smi_query"):
        for row in str(env["nvidia_smi_query"]).splitlines():
            lines.append(f"  nvidia-smi: {row}")
    if env.get("reason"):
        lines.append(f"  CUDA not usable: {env['reason']}")
    if env.get("missing_packages"):
        lines.append(f"  MISSING Python packages: {', '.join(env['missing_packages'])}")
    if tests is not None:
        c, step = tests["counts"], tests["step"]
        state = "timed out" if step["timed_out"] else f"exit {step['returncode']}"
        lines.append("")
        lines.append(
            f"Tests: {c['passed']} passed, {c['failed']} failed, {c['error']} errors, "
            f"{c['skipped']} skipped ({step['seconds']:.0f} s, {state}, from the {tests['source']})"
        )
        for case in tests["cases"]:
            extra = ""
            if case["outcome"] == "skipped":
                extra = f"  ({case['message'][:90]})"
            elif case["outcome"] in ("failed", "error"):
                extra = f"  {case['message'].splitlines()[0][:110] if case['message'] else ''}"
            elif case["properties"]:
                extra = "  " + ", ".join(f"{k}={v}" for k, v in case["properties"].items())
            name = case["name"].removeprefix("tests/")
            lines.append(f"  {case['outcome'].upper():8s} {name}{extra}")
        for item, why in tests["deselected"].items():
            lines.append(f"  DESELECT {item.removeprefix('tests/')}  ({why})")
        if not tests["finished"]:
            lines.append("  THE TEST RUN DID NOT FINISH (see the step's output in the JSON)")
    if bench is not None:
        step, rec = bench["step"], bench.get("record") or {}
        state = "timed out" if step["timed_out"] else f"exit {step['returncode']}"
        size = f"{rec['windows']:,} windows, batch {rec['batch_size']}, " if rec else ""
        lines.append("")
        lines.append(
            f"Training throughput ({size}{step['seconds']:.0f} s, {state}, from the "
            f"{bench['source']}):"
        )
        target = f"<= {TARGET_100_EPOCHS_S:.0f} s"
        lines.append(f"  {'variant':24s} {'samples/s':>12s} {'100 epochs':>12s}   target {target}")
        for v in bench["variants"].values():
            proj = v["projected_100_epochs_s"]
            shown = "n/a" if proj is None else f"{proj:,.0f} s"
            met = "yes" if v["target_met"] else "no"
            lines.append(f"  {v['label']:24s} {v['samples_per_s']:>12,.0f} {shown:>12s}   {met}")
        lines.append(f"  projection: {bench['projection']}")
        if bench["best"] is None:
            lines.append("  no throughput measured")
        else:
            best = bench["variants"][bench["best"]]
            verdict = "MET" if best["target_met"] else "NOT MET"
            lines.append(
                f"  target {verdict}: best is {best['label']}, "
                f"{best['projected_100_epochs_s']:,.0f} s for 100 epochs"
            )
    lines.append("")
    lines.append(
        f"Wall time {report['wall_seconds']:.0f} s (budget {report['budget_seconds']:.0f} s; "
        f"environment setup before it {report['setup_seconds']:.0f} s). "
        f"Exit status {report['exit_status']}: {report['verdict']}"
    )
    lines.append(f"JSON: {report['json']}")
    return "\n".join(lines)


def write_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")
    os.replace(tmp, path)


# --------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cpu-dry-run", action="store_true", help="tiny sizes on the CPU")
    parser.add_argument("--budget", type=float, default=480, help="seconds for all steps")
    parser.add_argument("--tests-timeout", type=float, default=240)
    parser.add_argument("--bench-timeout", type=float, default=200)
    parser.add_argument("--rounds", type=int, default=0, help="throughput rounds (3; dry run 1)")
    parser.add_argument("--variants", default=VARIANTS, help="train_throughput.py --variants")
    parser.add_argument(
        "--steps", default="tests,throughput", help="which of tests,throughput to run"
    )
    parser.add_argument("--out", type=Path, help=f"JSON (default {RESULTS.relative_to(ROOT)})")
    parser.add_argument("--workdir", type=Path, help="logs and reports (default: a temp folder)")
    parser.add_argument("--setup-seconds", type=float, default=0.0, help=argparse.SUPPRESS)
    parser.add_argument(
        "--missing-packages",
        action="store_true",
        help="print the packages this Python lacks (space-separated) and exit",
    )
    args = parser.parse_args(argv)
    if args.missing_packages:
        script = f"DISTRIBUTIONS = {required_distributions()!r}\n{ENV_SCRIPT}"
        info = json.loads(
            subprocess.run(
                [sys.executable, "-c", script], capture_output=True, text=True, check=True
            )
            .stdout.strip()
            .splitlines()[-1]
        )
        print(" ".join(info["missing_packages"]))
        return 0
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", stream=sys.stderr
    )
    started = time.monotonic()
    deadline = started + args.budget
    dry = args.cpu_dry_run
    out = args.out or (DRY_RUN_RESULTS if dry else RESULTS)
    work = args.workdir or Path(tempfile.mkdtemp(prefix="tracklstm_gpu_check_"))
    work.mkdir(parents=True, exist_ok=True)
    steps = {s.strip() for s in args.steps.split(",") if s.strip()}
    python = sys.executable
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT / "src"), env.get("PYTHONPATH")]))
    env["PYTHONUNBUFFERED"] = "1"
    env.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # deterministic cuBLAS for the tests

    def left(cap: float) -> float:
        return min(cap, deadline - time.monotonic() - 5)

    report: dict[str, Any] = {
        "kind": "gpu_check",
        "dry_run": dry,
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "python_executable": python,
        "budget_seconds": args.budget,
        "setup_seconds": args.setup_seconds,
        "workdir": str(work),
        "json": str(out),
    }
    machine, env_step = machine_info(python, env, work, left(90))
    report["machine"] = machine
    report["environment_step"] = asdict(env_step)
    cuda_ok = bool(machine.get("cuda_available"))
    if not dry and not cuda_ok:
        log.error(
            "torch cannot use a CUDA GPU here: %s",
            machine.get("reason") or machine.get("torch_error") or "unknown",
        )
    if machine.get("missing_packages"):
        log.error("missing Python packages: %s", ", ".join(machine["missing_packages"]))

    if "tests" in steps:
        forget_stale_cpp_build(machine)
        deselect = {}
        reason = cpp_configure(machine, env, work, left(120))
        report["cpp_configure"] = reason or "ok"
        if reason:
            # test_cpp's fixture would fail on it (test_cuda's C++ test skips, saying so)
            deselect["tests/test_cpp.py::test_cuda_device"] = reason
        report["tests"] = run_tests(python, env, work, left(args.tests_timeout), deselect)
    if "throughput" in steps:
        rounds = args.rounds or (1 if dry else 3)
        report["throughput"] = run_throughput(
            python, env, work, left(args.bench_timeout), dry, rounds, args.variants
        )

    tests, bench = report.get("tests"), report.get("throughput")
    if tests is not None and not tests["passed"]:
        status, verdict = 1, "a CUDA test failed or the tests did not finish"
    elif not dry and not cuda_ok:
        status, verdict = 2, "torch cannot use a CUDA GPU here"
    elif bench is not None and not bench["ok"]:
        status, verdict = 3, "the throughput step failed"
    else:
        status = 0
        verdict = "every step ran" + (", every test passed or skipped" if tests else "")
    report.update(
        exit_status=status,
        verdict=verdict,
        wall_seconds=round(time.monotonic() - started, 1),
    )
    write_json(out, report)
    print(summary_table(report), flush=True)
    return status


if __name__ == "__main__":
    raise SystemExit(main())
