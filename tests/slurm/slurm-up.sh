#!/usr/bin/env bash
# Start a one-node Slurm cluster on this host (for tests of the Slurm profile).
#
# Idempotent: installs slurm-wlm and munge with apt-get when missing, creates a munge
# key when missing, writes slurm.conf for this host, starts munged, slurmctld and slurmd
# (plain daemons, no systemd) unless they already run with the same configuration, then
# waits until the node is idle. Must run as root. Prints one summary line on success;
# exits non-zero with one "slurm-up: ERROR: ..." line on stderr when it cannot.
#
# Environment (all optional):
#   SLURM_TEST_STATE_DIR  state, spool, log and pid files   [/tmp/tracklstm-slurm]
#   SLURM_TEST_PARTITION  name of the (default) partition   [debug]
#   SLURM_TEST_TIMEOUT    seconds to wait for the node      [60]
#
# slurm.conf is written to $SLURM_TEST_STATE_DIR/slurm.conf and installed as
# /etc/slurm/slurm.conf unless that file exists and was not written by this script; in that
# case clients need `export SLURM_CONF=$SLURM_TEST_STATE_DIR/slurm.conf` (also written to
# $SLURM_TEST_STATE_DIR/env.sh).
set -euo pipefail

STATE_DIR="${SLURM_TEST_STATE_DIR:-/tmp/tracklstm-slurm}"
PARTITION="${SLURM_TEST_PARTITION:-debug}"
TIMEOUT="${SLURM_TEST_TIMEOUT:-60}"
CLUSTER="tracklstm"
MARKER="# written by tracklstm tests/slurm/slurm-up.sh"
ETC_CONF="/etc/slurm/slurm.conf"

die() {
    echo "slurm-up: ERROR: $*" >&2
    exit 1
}
log() { echo "slurm-up: $*" >&2; }

[[ "$(id -u)" -eq 0 ]] || die "must run as root (uid $(id -u))"

# --- packages -----------------------------------------------------------------------
need_pkgs=()
command -v slurmctld >/dev/null 2>&1 || need_pkgs+=(slurm-wlm)
command -v munged >/dev/null 2>&1 || need_pkgs+=(munge)
if ((${#need_pkgs[@]})); then
    command -v apt-get >/dev/null 2>&1 || die "missing ${need_pkgs[*]} and no apt-get to install them"
    export DEBIAN_FRONTEND=noninteractive
    log "installing ${need_pkgs[*]} with apt-get"
    apt_log="$(mktemp)"
    if ! apt-get install -y --no-install-recommends "${need_pkgs[@]}" >"$apt_log" 2>&1; then
        apt-get update >>"$apt_log" 2>&1 || true
        apt-get install -y --no-install-recommends "${need_pkgs[@]}" >>"$apt_log" 2>&1 ||
            die "apt-get install ${need_pkgs[*]} failed: $(tail -n 1 "$apt_log")"
    fi
    rm -f "$apt_log"
fi
for bin in slurmctld slurmd sinfo scontrol sbatch munged munge unmunge; do
    command -v "$bin" >/dev/null 2>&1 || die "$bin not found after installing slurm-wlm/munge"
done

# --- munge ---------------------------------------------------------------------------
munge_ok() { munge -n 2>/dev/null | unmunge >/dev/null 2>&1; }

MUNGE_USER=munge
id "$MUNGE_USER" >/dev/null 2>&1 || MUNGE_USER=root
if [[ ! -s /etc/munge/munge.key ]]; then
    log "creating munge key /etc/munge/munge.key"
    mkdir -p /etc/munge
    if command -v mungekey >/dev/null 2>&1; then
        mungekey --create --keyfile=/etc/munge/munge.key --force
    else
        dd if=/dev/urandom of=/etc/munge/munge.key bs=1 count=1024 status=none
    fi
fi
chown "$MUNGE_USER": /etc/munge /etc/munge/munge.key
chmod 0700 /etc/munge
chmod 0400 /etc/munge/munge.key

mkdir -p "$STATE_DIR"
if ! munge_ok; then
    for d in /run/munge /var/lib/munge /var/log/munge; do
        mkdir -p "$d"
        chown "$MUNGE_USER": "$d"
    done
    chmod 0755 /run/munge
    rm -f /run/munge/munge.socket.2 /run/munge/munge.socket.2.lock /run/munge/munged.pid
    if [[ "$MUNGE_USER" == root ]]; then
        munged --force || die "munged failed to start (see /var/log/munge/munged.log)"
    else
        runuser -u "$MUNGE_USER" -- munged ||
            die "munged failed to start (see /var/log/munge/munged.log)"
    fi
    touch "$STATE_DIR/munged.started-by-slurm-up"
    for _ in $(seq 1 20); do
        munge_ok && break
        sleep 0.5
    done
    munge_ok || die "munge credentials do not work (munge -n | unmunge failed)"
fi

# --- slurm.conf ------------------------------------------------------------------------
NODE="$(hostname -s)"
[[ -n "$NODE" ]] || die "hostname -s is empty"
node_hw="$(slurmd -C 2>/dev/null | head -n 1)" || true
[[ "$node_hw" == NodeName=* ]] || die "slurmd -C did not report this node's hardware"
# "NodeName=vm CPUs=2 Boards=1 SocketsPerBoard=1 CoresPerSocket=2 ThreadsPerCore=1 RealMemory=N"
hw_fields="$(tr ' ' '\n' <<<"$node_hw" | grep -E '^(CPUs|Boards|SocketsPerBoard|CoresPerSocket|ThreadsPerCore|RealMemory)=' | tr '\n' ' ')"
CPUS="$(sed -n 's/.*\bCPUs=\([0-9]\+\).*/\1/p' <<<"$node_hw")"
MEM="$(sed -n 's/.*RealMemory=\([0-9]\+\).*/\1/p' <<<"$node_hw")"
[[ -n "$CPUS" && -n "$MEM" ]] || die "cannot read CPUs/RealMemory from: $node_hw"
DEF_MEM_PER_CPU=$((MEM / CPUS < 1024 ? MEM / CPUS : 1024))

mkdir -p "$STATE_DIR"/{ctld,d,log,run}
conf_new="$STATE_DIR/slurm.conf.new"
cat >"$conf_new" <<EOF
$MARKER
# One-node test cluster; state in $STATE_DIR. Regenerated on every run.
ClusterName=$CLUSTER
SlurmctldHost=$NODE(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SwitchType=switch/none
ReturnToService=2
StateSaveLocation=$STATE_DIR/ctld
SlurmdSpoolDir=$STATE_DIR/d
SlurmctldPidFile=$STATE_DIR/run/slurmctld.pid
SlurmdPidFile=$STATE_DIR/run/slurmd.pid
SlurmctldLogFile=$STATE_DIR/log/slurmctld.log
SlurmdLogFile=$STATE_DIR/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=$DEF_MEM_PER_CPU
# Finished jobs stay visible to squeue/scontrol for an hour (no accounting database).
MinJobAge=3600
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
SlurmctldTimeout=30
SlurmdTimeout=60
InactiveLimit=0
# Reject jobs that can never run (e.g. more CPUs than the node has) at sbatch time
# instead of leaving them pending forever.
EnforcePartLimits=ALL
KillWait=10
Waittime=0
NodeName=$NODE NodeAddr=127.0.0.1 ${hw_fields}State=UNKNOWN
PartitionName=$PARTITION Nodes=$NODE Default=YES MaxTime=INFINITE State=UP
# For the preflight's tests: a partition with a time limit, and one that is down.
PartitionName=short Nodes=$NODE MaxTime=30 State=UP
PartitionName=closed Nodes=$NODE MaxTime=INFINITE State=DOWN
EOF

CONF="$STATE_DIR/slurm.conf"
if [[ ! -e "$ETC_CONF" ]] || grep -qxF "$MARKER" "$ETC_CONF"; then
    CONF="$ETC_CONF"
fi
echo "export SLURM_CONF=$CONF" >"$STATE_DIR/env.sh"
export SLURM_CONF="$CONF"

pid_alive() { # pid_alive PIDFILE NAME
    local pid
    [[ -s "$1" ]] || return 1
    pid="$(cat "$1")"
    [[ -d "/proc/$pid" ]] && [[ "$(cat "/proc/$pid/comm" 2>/dev/null)" == "$2" ]]
}

stop_daemons() {
    local f pid
    for f in slurmd slurmctld; do
        if pid_alive "$STATE_DIR/run/$f.pid" "$f"; then
            pid="$(cat "$STATE_DIR/run/$f.pid")"
            kill -TERM "$pid" 2>/dev/null || true
            for _ in $(seq 1 40); do
                [[ -d "/proc/$pid" ]] || break
                sleep 0.25
            done
            if [[ -d "/proc/$pid" ]]; then kill -KILL "$pid" 2>/dev/null || true; fi
        fi
    done
}

changed=0
if ! cmp -s "$conf_new" "$STATE_DIR/slurm.conf" || ! cmp -s "$conf_new" "$CONF"; then
    changed=1
fi
if ((changed)) && { pid_alive "$STATE_DIR/run/slurmctld.pid" slurmctld ||
    pid_alive "$STATE_DIR/run/slurmd.pid" slurmd; }; then
    log "configuration changed: restarting slurmctld and slurmd"
    stop_daemons
fi
mv -f "$conf_new" "$STATE_DIR/slurm.conf"
[[ "$CONF" == "$ETC_CONF" ]] && cp -f "$STATE_DIR/slurm.conf" "$ETC_CONF"

tail_log() { # last error lines of a daemon's log, on one line
    local f="$STATE_DIR/log/$1.log" lines
    lines="$(grep -E 'error|fatal' "$f" 2>/dev/null | tail -n 2)"
    [[ -n "$lines" ]] || lines="$(tail -n 3 "$f" 2>/dev/null)"
    echo "${lines:-no log at $f}" | tr '\n' ' '
}

if ! pid_alive "$STATE_DIR/run/slurmctld.pid" slurmctld; then
    slurmctld -f "$CONF" || die "slurmctld failed to start: $(tail_log slurmctld)"
fi
ctld_up() { timeout 5 scontrol ping 2>/dev/null | grep -q 'is UP'; }
for i in $(seq 1 $((TIMEOUT * 2))); do
    if ((i > 1)) && ! pid_alive "$STATE_DIR/run/slurmctld.pid" slurmctld; then
        die "slurmctld exited: $(tail_log slurmctld)"
    fi
    ctld_up && break
    sleep 0.5
done
ctld_up || die "slurmctld does not answer after ${TIMEOUT}s: $(tail_log slurmctld)"

if ! pid_alive "$STATE_DIR/run/slurmd.pid" slurmd; then
    slurmd -f "$CONF" -N "$NODE" || die "slurmd failed to start: $(tail_log slurmd)"
fi

# --- wait for the node -------------------------------------------------------------------
state=""
resumed=0
for _ in $(seq 1 $((TIMEOUT * 2))); do
    state="$(timeout 5 sinfo -h -n "$NODE" -o '%T' 2>/dev/null | head -n 1)"
    case "$state" in
    idle | mixed | allocated | completing) break ;;
    down* | drain*)
        if ((!resumed)); then
            timeout 5 scontrol update NodeName="$NODE" State=RESUME 2>/dev/null || true
            resumed=1
        fi
        ;;
    esac
    sleep 0.5
done
case "$state" in
idle | mixed | allocated | completing) ;;
*)
    reason="$(timeout 5 sinfo -h -n "$NODE" -o '%E' 2>/dev/null | head -n 1)"
    die "node $NODE is '${state:-unknown}' after ${TIMEOUT}s (reason: ${reason:-none}): $(tail_log slurmd)"
    ;;
esac

echo "slurm-up: cluster $CLUSTER up: node $NODE $state, partition $PARTITION (default)," \
    "CPUs=$CPUS RealMemory=${MEM}MB, SLURM_CONF=$CONF, state $STATE_DIR"
