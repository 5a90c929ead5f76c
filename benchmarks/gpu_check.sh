#!/usr/bin/env bash
# GPU check: the CUDA tests and the training throughput on one GPU machine, in at most 8 minutes
# once the Python environment is there. Run from the repository root:
#
#   bash benchmarks/gpu_check.sh                  # on the GPU machine
#   bash benchmarks/gpu_check.sh --cpu-dry-run    # anywhere: the same steps at tiny sizes, < 1 min
#
# Other options go to benchmarks/gpu_check.py (--help); benchmarks/README.md describes the check.
# The Python it uses, in this order:
#   $GPU_CHECK_PYTHON   as it is (nothing installed);
#   .venv/bin/python    the project's virtualenv;
#   a new .venv         made here. Where python3 already has a CUDA build of torch (a GPU image),
#                       .venv sees python3's packages (no torch download; works offline).
#                       Otherwise: python3 -m venv .venv && .venv/bin/pip install -e .[dev].
# In .venv, packages that the tests import and that are missing are installed, and (unless
# --cpu-dry-run) a torch without CUDA is replaced by $TORCH_SPEC (default torch==2.13.0: on
# Linux x86_64 the package index's default build is the CUDA one; TORCH_INDEX_URL=... picks
# another index). pip's own settings apply: on a machine without network, bring wheels and set
# PIP_NO_INDEX=1 PIP_FIND_LINKS=/path/to/wheels. The package itself is used from src/.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf 'gpu_check.sh: %s\n' "$*" >&2; }

dry=0
for arg in "$@"; do
    if [[ $arg == --cpu-dry-run ]]; then dry=1; fi
done

# torch.version.cuda of a Python ("None": a CPU build); fails when torch does not import.
torch_cuda() { "$1" -c 'import torch; print(torch.version.cuda)' 2>/dev/null; }
torch_version() { "$1" -c 'import torch; print(torch.__version__)' 2>/dev/null || echo "none"; }

# The distributions a Python lacks of those the package and its tests need (pyproject.toml's
# dependencies and its `test` extra: benchmarks/gpu_check.py reads them).
missing_packages() { "$1" benchmarks/gpu_check.py --missing-packages; }

manage=1
if [[ -n ${GPU_CHECK_PYTHON:-} ]]; then
    py=$GPU_CHECK_PYTHON
    manage=0
    log "using GPU_CHECK_PYTHON=$py as it is"
elif [[ -x .venv/bin/python ]]; then
    py=.venv/bin/python
    log "using .venv/bin/python"
else
    base=${PYTHON:-python3}
    base_cuda=$(torch_cuda "$base" || true)
    if [[ -n $base_cuda && $base_cuda != None ]]; then
        log "$base has torch $(torch_version "$base") with CUDA $base_cuda: making .venv on top of it"
        # Without ensurepip (a Debian python3 without python3-venv) the venv gets no pip of its
        # own and uses python3's, which it sees.
        "$base" -m venv --system-site-packages .venv ||
            "$base" -m venv --system-site-packages --without-pip .venv
        # When python3 is itself a virtualenv, --system-site-packages reaches only the
        # interpreter beneath it: a .pth file adds python3's own site-packages.
        site_dir=$(.venv/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
        "$base" -c 'import site; print("\n".join(site.getsitepackages()))' \
            >"$site_dir/_gpu_check_base.pth"
        py=.venv/bin/python
    else
        log "making .venv and installing the project (pip install -e .[dev])"
        if ! "$base" -m venv .venv; then
            log "$base -m venv failed (on Debian: apt-get install python3-venv); or set GPU_CHECK_PYTHON"
            exit 2
        fi
        py=.venv/bin/python
        timeout 1800 "$py" -m pip install --quiet -e ".[dev]" ||
            log "pip install -e .[dev] failed; the check reports what is missing"
    fi
fi

if ((manage)); then
    read -r -a missing <<<"$(missing_packages "$py")"
    if ((${#missing[@]})); then
        log "installing what $py lacks: ${missing[*]}"
        timeout 900 "$py" -m pip install --quiet "${missing[@]}" ||
            log "pip could not install ${missing[*]} (no network? PIP_NO_INDEX=1 PIP_FIND_LINKS=...)"
    fi
fi

cuda=$(torch_cuda "$py" || true)
if ((!dry && manage)) && [[ -z $cuda || $cuda == None ]]; then
    spec=${TORCH_SPEC:-torch==2.13.0}
    log "torch in $py is $(torch_version "$py"), without CUDA: installing $spec${TORCH_INDEX_URL:+ from $TORCH_INDEX_URL}"
    index=()
    if [[ -n ${TORCH_INDEX_URL:-} ]]; then index=(--index-url "$TORCH_INDEX_URL"); fi
    timeout 1800 "$py" -m pip install --quiet --force-reinstall "${index[@]}" "$spec" ||
        log "pip install $spec failed"
    cuda=$(torch_cuda "$py" || true)
fi
log "python $py: torch $(torch_version "$py"), CUDA ${cuda:-none} (setup took ${SECONDS} s)"
if ((!dry)) && [[ -z $cuda || $cuda == None ]]; then
    log "THIS TORCH HAS NO CUDA: the CUDA tests will skip and the check will exit 2; set" \
        "TORCH_INDEX_URL to an index of CUDA builds, or GPU_CHECK_PYTHON to a Python with one"
fi

export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
exec "$py" benchmarks/gpu_check.py --setup-seconds "$SECONDS" "$@"
