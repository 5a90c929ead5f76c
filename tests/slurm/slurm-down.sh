#!/usr/bin/env bash
# Stop the one-node Slurm cluster started by slurm-up.sh: cancel its jobs, stop slurmd
# and slurmctld, and stop munged if slurm-up.sh started it. Safe to run when nothing runs.
#
# Environment: SLURM_TEST_STATE_DIR (as for slurm-up.sh)  [/tmp/tracklstm-slurm]
# Option: --keep-munge  leave munged running.
set -uo pipefail

STATE_DIR="${SLURM_TEST_STATE_DIR:-/tmp/tracklstm-slurm}"
keep_munge=0
[[ "${1:-}" == "--keep-munge" ]] && keep_munge=1

log() { echo "slurm-down: $*" >&2; }

if [[ ! -d "$STATE_DIR" ]]; then
    echo "slurm-down: nothing to stop (no $STATE_DIR)"
    exit 0
fi
# shellcheck source=/dev/null
[[ -s "$STATE_DIR/env.sh" ]] && source "$STATE_DIR/env.sh"

pid_of() { # pid_of PIDFILE NAME -> prints the pid if that process is alive
    local pid
    [[ -s "$1" ]] || return 1
    pid="$(cat "$1")"
    [[ -d "/proc/$pid" && "$(cat "/proc/$pid/comm" 2>/dev/null)" == "$2" ]] || return 1
    echo "$pid"
}

stop_pid() { # stop_pid PID NAME: TERM, wait up to 15 s, then KILL
    local pid="$1"
    kill -TERM "$pid" 2>/dev/null || return 0
    for _ in $(seq 1 60); do
        [[ -d "/proc/$pid" ]] || return 0
        sleep 0.25
    done
    log "$2 ($pid) did not stop after SIGTERM; sending SIGKILL"
    kill -KILL "$pid" 2>/dev/null || true
}

ctld_pid="$(pid_of "$STATE_DIR/run/slurmctld.pid" slurmctld)" || ctld_pid=""
d_pid="$(pid_of "$STATE_DIR/run/slurmd.pid" slurmd)" || d_pid=""
stopped=()

if [[ -n "$ctld_pid" ]] && command -v scancel >/dev/null 2>&1; then
    # Cancel pending/running jobs so that no slurmstepd outlives the daemons.
    jobs="$(squeue -h -t PENDING,RUNNING,SUSPENDED,COMPLETING -o '%i' 2>/dev/null | tr '\n' ' ')"
    if [[ -n "${jobs// /}" ]]; then
        log "cancelling jobs: $jobs"
        # shellcheck disable=SC2086
        scancel $jobs 2>/dev/null || true
        for _ in $(seq 1 60); do
            [[ -z "$(squeue -h -t PENDING,RUNNING,SUSPENDED,COMPLETING -o '%i' 2>/dev/null)" ]] && break
            sleep 0.25
        done
    fi
fi

if [[ -n "$d_pid" ]]; then
    stop_pid "$d_pid" slurmd
    stopped+=(slurmd)
fi
if [[ -n "$ctld_pid" ]]; then
    stop_pid "$ctld_pid" slurmctld
    stopped+=(slurmctld)
fi

if ((!keep_munge)) && [[ -e "$STATE_DIR/munged.started-by-slurm-up" ]]; then
    m_pid="$(pid_of /run/munge/munged.pid munged)" || m_pid=""
    if [[ -n "$m_pid" ]]; then
        stop_pid "$m_pid" munged
        stopped+=(munged)
    fi
    rm -f "$STATE_DIR/munged.started-by-slurm-up"
fi

if ((${#stopped[@]})); then
    echo "slurm-down: stopped ${stopped[*]}"
else
    echo "slurm-down: nothing was running"
fi
