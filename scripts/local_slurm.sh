#!/usr/bin/env bash
# A real one-node SLURM cluster on this machine, for trying `dora grid` sweeps (docs/SCALING.md).
#
#   sudo scripts/local_slurm.sh          # install (when missing), configure, start, wait for the node
#   sudo scripts/local_slurm.sh stop     # stop the daemons
#   scripts/local_slurm.sh status        # sinfo, or why there is no cluster
#
# Debian/Ubuntu packages: slurmctld slurmd slurm-client munge, plus slurmdbd and mariadb-server for
# job accounting: Dora and submitit read job states with `sacct`, without it every job shows UNKNOWN
# and `dora grid` never sees a job finish. Runs as root; needs no systemd (the daemons are started
# directly, as in a container or CI). Idempotent: a second `start` leaves running daemons alone
# unless the configuration it would write has changed. It owns /etc/slurm/slurm.conf and
# slurmdbd.conf only when absent or written by this script: it never overwrites a real cluster's.
#
# Environment: LOCAL_SLURM_WAIT (seconds to wait for the node, default 120),
#              LOCAL_SLURM_PARTITION (partition name, default `local`).
set -euo pipefail
shopt -s inherit_errexit

ACTION=${1:-start}
WAIT=${LOCAL_SLURM_WAIT:-120}
PARTITION=${LOCAL_SLURM_PARTITION:-local}
CONF_DIR=/etc/slurm
CONF=$CONF_DIR/slurm.conf
DBD_CONF=$CONF_DIR/slurmdbd.conf
CLUSTER=jasco-local
MARKER="# Written by jasco scripts/local_slurm.sh"
STATE_DIR=/var/lib/slurm
LOG_DIR=/var/log/slurm
RUN_DIR=/run/slurm
MUNGE_KEY=/etc/munge/munge.key
MUNGE_PID=/run/munge/munged.pid
MYSQL_PID=/run/mysqld/mysqld.pid
PACKAGES=(slurmctld slurmd slurm-client munge slurmdbd mariadb-server)

log() { echo "local_slurm: $*" >&2; }
die() { log "error: $*"; exit 1; }

pid_alive() {  # pid_alive PIDFILE: the process named in PIDFILE is running
    [[ -s $1 ]] && kill -0 "$(cat "$1")" 2>/dev/null
}

stop_pidfile() {  # stop_pidfile PIDFILE NAME: TERM the process, wait up to 10 s for it to exit
    local pidfile=$1 name=$2 pid
    pid_alive "$pidfile" || { rm -f "$pidfile"; return 0; }
    pid=$(cat "$pidfile")
    log "stopping $name (pid $pid)"
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
    kill -0 "$pid" 2>/dev/null && kill -9 "$pid" 2>/dev/null || true
    rm -f "$pidfile"
}

install_packages() {
    local missing=()
    for package in "${PACKAGES[@]}"; do
        dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || missing+=("$package")
    done
    [[ ${#missing[@]} -eq 0 ]] && return 0
    command -v apt-get >/dev/null || die "missing ${missing[*]} and no apt-get: install them by hand"
    log "installing ${missing[*]}"
    local apt=(apt-get -o DPkg::Lock::Timeout=600 -y -q)
    export DEBIAN_FRONTEND=noninteractive
    # The packages' scripts may start munge and mariadb themselves (reused below) or be kept from
    # starting anything (policy-rc.d in containers); slurm* refuse to start without a configuration.
    "${apt[@]}" install --no-install-recommends "${missing[@]}" >/dev/null \
        || { "${apt[@]}" update >/dev/null && "${apt[@]}" install --no-install-recommends "${missing[@]}" >/dev/null; } \
        || die "apt-get install ${missing[*]} failed"
}

start_munge() {
    if munge -n </dev/null 2>/dev/null | unmunge >/dev/null 2>&1; then return 0; fi
    getent passwd munge >/dev/null || die "the munge package did not create the munge user"
    install -d -o munge -g munge -m 0700 /etc/munge /var/lib/munge
    install -d -o munge -g munge -m 0755 /run/munge /var/log/munge
    if [[ ! -s $MUNGE_KEY ]]; then
        log "creating $MUNGE_KEY"
        (umask 077; head -c 1024 /dev/urandom >"$MUNGE_KEY")
    fi
    chown munge:munge "$MUNGE_KEY"
    chmod 0400 "$MUNGE_KEY"
    stop_pidfile "$MUNGE_PID" munged  # a stale daemon that does not answer
    log "starting munged"
    runuser -u munge -- /usr/sbin/munged --pid-file="$MUNGE_PID"
    for _ in $(seq 50); do
        munge -n </dev/null 2>/dev/null | unmunge >/dev/null 2>&1 && return 0
        sleep 0.2
    done
    die "munged does not answer (see /var/log/munge/munged.log)"
}

start_mariadb() {  # the database of slurmdbd; root reaches it through its Unix socket (no password)
    if mariadb-admin ping >/dev/null 2>&1; then return 0; fi
    install -d -o mysql -g mysql /run/mysqld /var/log/mysql
    if [[ ! -d /var/lib/mysql/mysql ]]; then
        log "initialising /var/lib/mysql"
        mariadb-install-db --user=mysql >/dev/null
    fi
    stop_pidfile "$MYSQL_PID" mariadbd
    log "starting mariadbd"
    (setsid /usr/sbin/mariadbd --user=mysql >>/var/log/mysql/local_slurm.log 2>&1 </dev/null &)
    for _ in $(seq 120); do
        mariadb-admin ping >/dev/null 2>&1 && return 0
        sleep 0.25
    done
    die "mariadbd does not answer (see /var/log/mysql/local_slurm.log)"
}

node_line() {  # this machine's NodeName line, as slurmd detects it (CPUs, topology, RealMemory)
    local line
    line=$(slurmd -C | sed -n 1p) || die "slurmd -C failed"
    [[ $line == NodeName=* ]] || die "unexpected slurmd -C output: $line"
    echo "$line NodeAddr=127.0.0.1 State=UNKNOWN"
}

write_file() {  # write_file PATH MODE TEXT: prints "changed" when PATH was (re)written
    local path=$1 mode=$2 text=$3
    if [[ -e $path ]] && ! grep -qF "$MARKER" "$path"; then
        die "$path exists and was not written by this script: this machine already has a SLURM configuration"
    fi
    if [[ -e $path ]] && [[ "$(cat "$path")" == "$text" ]]; then return 0; fi
    mkdir -p "$(dirname "$path")"
    (umask 077; printf '%s\n' "$text" >"$path.tmp")
    chmod "$mode" "$path.tmp"
    mv "$path.tmp" "$path"
    log "wrote $path"
    echo changed
}

write_config() {  # prints "changed" when slurm.conf or slurmdbd.conf was (re)written
    local host node
    host=$(hostname -s 2>/dev/null || uname -n)
    node=$(node_line)
    write_file "$DBD_CONF" 600 "$MARKER: accounting for the one-node cluster.
AuthType=auth/munge
DbdHost=$host
DbdAddr=127.0.0.1
SlurmUser=root
PidFile=$RUN_DIR/slurmdbd.pid
LogFile=$LOG_DIR/slurmdbd.log
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageUser=root
StorageLoc=slurm_acct_db"
    write_file "$CONF" 644 "$MARKER: a one-node cluster for trying sweeps.
ClusterName=$CLUSTER
SlurmctldHost=$host(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU_Memory
SchedulerType=sched/backfill
ReturnToService=2
MpiDefault=none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=127.0.0.1
JobCompType=jobcomp/none
MailProg=/bin/true
StateSaveLocation=$STATE_DIR/slurmctld
SlurmdSpoolDir=$STATE_DIR/slurmd
SlurmctldPidFile=$RUN_DIR/slurmctld.pid
SlurmdPidFile=$RUN_DIR/slurmd.pid
SlurmctldLogFile=$LOG_DIR/slurmctld.log
SlurmdLogFile=$LOG_DIR/slurmd.log
SlurmdTimeout=300
InactiveLimit=0
KillWait=10
$node
PartitionName=$PARTITION Nodes=ALL Default=YES MaxTime=INFINITE State=UP"
}

stop_slurm() {
    stop_pidfile "$RUN_DIR/slurmd.pid" slurmd
    stop_pidfile "$RUN_DIR/slurmctld.pid" slurmctld
    stop_pidfile "$RUN_DIR/slurmdbd.pid" slurmdbd
}

start_slurmdbd() {  # and register the cluster, which slurmctld needs before it starts
    if ! pid_alive "$RUN_DIR/slurmdbd.pid"; then log "starting slurmdbd"; slurmdbd; fi
    local clusters=""
    for _ in $(seq 120); do
        clusters=$(sacctmgr -n -P show cluster format=cluster 2>/dev/null) && break
        sleep 0.25
    done
    if ! grep -qx "$CLUSTER" <<<"$clusters"; then
        sacctmgr -i add cluster "$CLUSTER" >/dev/null || die "sacctmgr add cluster failed (see $LOG_DIR/slurmdbd.log)"
    fi
}

node_state() {
    sinfo -h -N -o "%t" 2>/dev/null | head -n 1
}

start() {
    [[ $(id -u) -eq 0 ]] || die "run as root (it installs packages and starts daemons)"
    install_packages
    start_munge
    start_mariadb
    mkdir -p "$STATE_DIR/slurmctld" "$STATE_DIR/slurmd" "$LOG_DIR" "$RUN_DIR"
    local changed
    changed=$(write_config)  # an assignment, so that a failure inside stops the script (set -e)
    if [[ $changed == *changed* ]]; then stop_slurm; fi
    start_slurmdbd
    if ! pid_alive "$RUN_DIR/slurmctld.pid"; then log "starting slurmctld"; slurmctld; fi
    if ! pid_alive "$RUN_DIR/slurmd.pid"; then log "starting slurmd"; slurmd; fi
    local state="" node
    node=$(hostname -s 2>/dev/null || uname -n)
    for _ in $(seq "$((WAIT * 2))"); do
        state=$(node_state)
        case $state in
            idle|mix|alloc) log "node $node is $state (partition $PARTITION)"; sinfo; return 0 ;;
            down*|drain*|drng*|fail*) scontrol update nodename="$node" state=resume 2>/dev/null || true ;;
        esac
        sleep 0.5
    done
    log "node state: '${state:-no answer}'; end of $LOG_DIR/slurmctld.log and slurmd.log:"
    tail -n 20 "$LOG_DIR/slurmctld.log" "$LOG_DIR/slurmd.log" >&2 || true
    die "the node did not become idle within ${WAIT}s"
}

case $ACTION in
    start) start ;;
    stop)
        [[ $(id -u) -eq 0 ]] || die "run as root"
        stop_slurm
        stop_pidfile "$MYSQL_PID" mariadbd
        stop_pidfile "$MUNGE_PID" munged ;;
    status)
        command -v sinfo >/dev/null || die "SLURM is not installed (run: sudo $0)"
        sinfo ;;
    *) die "usage: $0 [start|stop|status]" ;;
esac
