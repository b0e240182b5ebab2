#!/usr/bin/env bash
# A one-node SLURM from Debian's packages, for the tests marked `slurm`.
#
#   tools/slurm.sh up DIR       install (apt-get) if needed, start munged, slurmctld
#                               and slurmd; prints `export SLURM_CONF=DIR/slurm.conf`
#   tools/slurm.sh down DIR     cancel every job, wait for the queue to empty, stop the
#                               daemons
#   tools/slurm.sh status DIR   exit 0 if up
#
# Everything it writes (config, munge key and socket, state, spool, logs,
# pidfiles) is under DIR.  Both commands are idempotent and take a lock on DIR;
# every wait is bounded.  Daemons are stopped by the pids in their pidfiles,
# each checked against the program it should be, never by name.  Needs root
# (SlurmUser=root; jobs run as the submitting user, root here).
#
# SLURM_CPUS (default 8) is what the node claims, more than the cores if need
# be (SlurmdParameters=config_overrides), so that tests can run 8 jobs at once;
# SLURM_MEMORY_MB (default: what `slurmd -C` reports, at most 16384) is its
# RealMemory, never more than slurmd finds, or the node drains.
set -euo pipefail

PACKAGES=(slurmctld slurmd slurm-client munge)
START_TIMEOUT=60    # seconds for the node to come up idle
STOP_TIMEOUT=30     # seconds for the queue to empty, and for each daemon to exit

say() { echo "slurm.sh: $*" >&2; }
die() { say "$2"; exit "$1"; }

usage() { die 2 "usage: $0 up|down|status DIR"; }
[ $# -eq 2 ] || usage
command=$1
mkdir -p "$2"
DIR=$(cd "$2" && pwd)
CONF=$DIR/slurm.conf
export SLURM_CONF=$CONF
HOST=$(hostname -s)
MUNGE_SOCKET=$DIR/munge/munge.socket

# ---- processes, by pidfile ----

# The pid in pidfile $1 if it is alive and runs program $2.
pid_of() {
    local pid
    pid=$(cat "$1" 2>/dev/null) || return 1
    [[ $pid =~ ^[0-9]+$ ]] || return 1
    [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "$2" ] || return 1
    echo "$pid"
}

# Stop the daemon of pidfile $1 (program $2): SIGTERM, then SIGKILL.
stop_daemon() {
    local pid deadline
    pid=$(pid_of "$1" "$2") || { rm -f "$1"; return 0; }
    say "stopping $2 (pid $pid)"
    kill -TERM "$pid" 2>/dev/null || true
    deadline=$((SECONDS + STOP_TIMEOUT))
    while [ -d "/proc/$pid" ] && [ $SECONDS -lt $deadline ]; do sleep 0.2; done
    if [ -d "/proc/$pid" ]; then
        say "$2 (pid $pid) still running after ${STOP_TIMEOUT} s: SIGKILL"
        kill -KILL "$pid" 2>/dev/null || true
    fi
    rm -f "$1"
}

# Wait (bounded by $1 seconds) until command "${@:2}" succeeds.
wait_for() {
    local deadline=$((SECONDS + $1))
    shift
    until "$@" >/dev/null 2>&1; do
        [ $SECONDS -lt $deadline ] || return 1
        sleep 0.2
    done
}

# ---- up ----

install_packages() {
    local missing=0 program
    for program in munged slurmctld slurmd sbatch squeue scancel sinfo scontrol; do
        command -v "$program" >/dev/null || missing=1
    done
    [ $missing = 0 ] && return 0
    command -v apt-get >/dev/null || die 3 "SLURM is not installed and there is no apt-get"
    say "installing ${PACKAGES[*]}"
    export DEBIAN_FRONTEND=noninteractive
    if ! timeout 600 apt-get install -y -qq --no-install-recommends "${PACKAGES[@]}" \
            >"$DIR/apt.log" 2>&1; then
        timeout 300 apt-get update -qq >>"$DIR/apt.log" 2>&1 || true
        timeout 600 apt-get install -y -qq --no-install-recommends "${PACKAGES[@]}" \
            >>"$DIR/apt.log" 2>&1 || die 3 "apt-get install failed: see $DIR/apt.log"
    fi
}

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

write_config() {
    local cpus=${SLURM_CPUS:-8} found memory ctld_port slurmd_port
    found=$(slurmd -C | sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p')
    memory=${SLURM_MEMORY_MB:-$(( found < 16384 ? found : 16384 ))}
    [ "$memory" -le "$found" ] || die 2 "SLURM_MEMORY_MB=$memory is more than slurmd finds ($found)"
    ctld_port=$(free_port)
    slurmd_port=$(free_port)
    mkdir -p "$DIR/state" "$DIR/spool" "$DIR/log"
    cat >"$CONF.tmp" <<EOF
# Written by tools/slurm.sh: a one-node cluster for poolguard's tests.
ClusterName=poolguard
SlurmctldHost=$HOST(127.0.0.1)
SlurmctldPort=$ctld_port
SlurmdPort=$slurmd_port
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$MUNGE_SOCKET
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$DIR/slurmctld.pid
SlurmdPidFile=$DIR/slurmd.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
# No systemd, no cgroups here: processes tracked by parentage, no task
# containment, no accounting.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=none
MailProg=/bin/true
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
SlurmdParameters=config_overrides
ReturnToService=2
# A cancelled or timed-out job gets SIGTERM, then SIGKILL 2 s later (not 30).
KillWait=2
InactiveLimit=0
NodeName=$HOST NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$memory State=UNKNOWN
PartitionName=debug Nodes=$HOST Default=YES MaxTime=INFINITE State=UP
EOF
    mv "$CONF.tmp" "$CONF"
}

start_munge() {
    pid_of "$DIR/munge/munged.pid" munged >/dev/null && return 0
    mkdir -p "$DIR/munge" "$DIR/log"
    chmod 700 "$DIR/munge"
    if [ ! -s "$DIR/munge/munge.key" ]; then
        dd if=/dev/urandom of="$DIR/munge/munge.key.tmp" bs=1024 count=1 status=none
        chmod 400 "$DIR/munge/munge.key.tmp"
        mv "$DIR/munge/munge.key.tmp" "$DIR/munge/munge.key"
    fi
    # As root, with --force: DIR may sit in a private (0700) directory, which
    # munged would refuse for its socket; only root uses this cluster.
    munged --force --socket="$MUNGE_SOCKET" --key-file="$DIR/munge/munge.key" \
        --pid-file="$DIR/munge/munged.pid" --log-file="$DIR/log/munged.log" \
        --seed-file="$DIR/munge/munged.seed" 9>&-
    wait_for 10 munge -S "$MUNGE_SOCKET" -n || die 1 "munged did not start: see $DIR/log/munged.log"
}

node_state() { sinfo -h -n "$HOST" -o %T 2>/dev/null; }

node_idle() { [[ "$(node_state)" == idle* || "$(node_state)" == mix* ]]; }

up() {
    if pid_of "$DIR/slurmctld.pid" slurmctld >/dev/null \
            && pid_of "$DIR/slurmd.pid" slurmd >/dev/null && node_idle; then
        say "already up"
        echo "export SLURM_CONF=$CONF"
        return 0
    fi
    install_packages
    start_munge
    if ! pid_of "$DIR/slurmctld.pid" slurmctld >/dev/null; then
        pid_of "$DIR/slurmd.pid" slurmd >/dev/null || write_config
        slurmctld -f "$CONF" 9>&-
    fi
    wait_for 30 scontrol ping || die 1 "slurmctld did not answer: see $DIR/log/slurmctld.log"
    pid_of "$DIR/slurmd.pid" slurmd >/dev/null || slurmd -f "$CONF" -N "$HOST" 9>&-
    local deadline=$((SECONDS + START_TIMEOUT))
    until node_idle; do
        case "$(node_state)" in
            drain*|down*) scontrol update NodeName="$HOST" State=RESUME 2>/dev/null || true ;;
        esac
        [ $SECONDS -lt $deadline ] || die 1 "the node is not idle after ${START_TIMEOUT} s ($(node_state)): see $DIR/log/"
        sleep 0.5
    done
    echo "export SLURM_CONF=$CONF" | tee "$DIR/env"
    say "up: $(sinfo -h -o '%P %D %c CPUs %m MB %T')"
}

# ---- down ----

down() {
    # A controller that died under its jobs is started again to end them: it
    # recovers them from its state, and scancel has their step daemons end them.
    if [ -f "$CONF" ] && pid_of "$DIR/slurmd.pid" slurmd >/dev/null \
            && ! pid_of "$DIR/slurmctld.pid" slurmctld >/dev/null; then
        say "slurmd runs without slurmctld: starting slurmctld to cancel the jobs"
        slurmctld -f "$CONF" 9>&- && wait_for 30 scontrol ping || true
    fi
    if [ -f "$CONF" ] && pid_of "$DIR/slurmctld.pid" slurmctld >/dev/null; then
        local jobs
        jobs=$(squeue -h -o %A 2>/dev/null | tr '\n' ' ')
        if [ -n "${jobs// /}" ]; then
            say "cancelling jobs $jobs"
            # shellcheck disable=SC2086
            scancel $jobs || true
            wait_for $STOP_TIMEOUT bash -c '[ -z "$(squeue -h -o %A)" ]' \
                || say "jobs still in the queue after ${STOP_TIMEOUT} s: $(squeue -h -o '%A %T' | tr '\n' ' ')"
        fi
    fi
    # Processes of jobs the controller could not end: by pid, as slurmd's
    # step daemons list them.
    if [ -f "$CONF" ] && pid_of "$DIR/slurmd.pid" slurmd >/dev/null; then
        local left
        left=$( (scontrol listpids 2>/dev/null || true) | awk 'NR > 1 && $1 ~ /^[0-9]+$/ {print $1}' | tr '\n' ' ')
        if [ -n "${left// /}" ]; then
            say "killing processes of jobs left: $left"
            # shellcheck disable=SC2086
            kill -KILL $left 2>/dev/null || true
        fi
    fi
    stop_daemon "$DIR/slurmd.pid" slurmd
    stop_daemon "$DIR/slurmctld.pid" slurmctld
    stop_daemon "$DIR/munge/munged.pid" munged
    say "down"
}

status() {
    pid_of "$DIR/slurmctld.pid" slurmctld >/dev/null && pid_of "$DIR/slurmd.pid" slurmd >/dev/null \
        && node_idle && echo "export SLURM_CONF=$CONF"
}

[ "$(id -u)" = 0 ] || [ "$command" = status ] || die 3 "needs root (SlurmUser=root, apt-get)"
# The daemons are started with 9>&-: they must not inherit the lock.
exec 9>"$DIR/.lock"
timeout_lock=$((START_TIMEOUT + STOP_TIMEOUT))
flock -w "$timeout_lock" 9 || die 1 "$DIR is locked by another slurm.sh for over ${timeout_lock} s"
case "$command" in
    up) up ;;
    down) down ;;
    status) status ;;
    *) usage ;;
esac
