#!/usr/bin/env bash
# A real single-node SLURM cluster on localhost, for rotsweep's tests and CI.
#
#   slurm/cluster.sh start    install what is missing, write the config, start the
#                             daemons, and return once a job has run and sacct saw it
#                             (already up: does nothing)
#   slurm/cluster.sh stop     stop the daemons
#   slurm/cluster.sh status   say whether the cluster is up (exit 0) or not (exit 1)
#
# Built from Debian 12's packages (Slurm 22.05) and started by hand, since there is
# no systemd here.  Needs root.  The daemons, in the order they start:
#
#   munged     authenticates every Slurm message (key: /etc/munge/munge.key)
#   mariadbd   the database behind accounting: a private instance on 127.0.0.1
#   slurmdbd   the accounting daemon.  sacct reads job states from it, and submitit
#              polls job states with sacct.  Slurm 22.05 has nothing lighter that
#              feeds sacct: accounting_storage/filetxt is gone, and jobcomp/*
#              plugins only write completion logs.
#   slurmctld  the controller
#   slurmd     the compute daemon of the one node, "localhost"
#
# Everything the cluster writes lives under /var/lib/rotsweep-slurm: spool dirs,
# the database, pid files (run/) and logs (log/).  The Slurm commands (sinfo,
# sbatch, sacct...) read /etc/slurm/slurm.conf, so the config is written there;
# the script refuses to overwrite a config it did not write.
set -euo pipefail

STATE_DIR=/var/lib/rotsweep-slurm
LOG_DIR=$STATE_DIR/log
# Pid files are named after the process they point to (mariadbd.pid ...).
RUN_DIR=$STATE_DIR/run
SLURM_CONF=/etc/slurm/slurm.conf
DBD_CONF=/etc/slurm/slurmdbd.conf
CONF_MARK="# Written by rotsweep slurm/cluster.sh"
CLUSTER_NAME=rotsweep
PARTITION=debug
NODE=localhost
# The private MariaDB listens on loopback only, on a port of its own, so that it
# never collides with a system MySQL on 3306.
DB_PORT=6830
DB_SOCKET=$RUN_DIR/mariadbd.sock
NODE_READY_TIMEOUT_S=90

PACKAGES=(munge slurmctld slurmd slurm-client slurmdbd mariadb-server-core mariadb-client-core)

die() { echo "cluster.sh: $*" >&2; exit 1; }
log() { echo "cluster.sh: $*"; }

# --- processes -----------------------------------------------------------------

# The pid in a pid file, if that process is alive and is the daemon the file is
# named after: after a reboot a stale pid may belong to some other process.
live_pid() {
    local pidfile=$1 pid
    [[ -s $pidfile ]] || return 1
    pid=$(<"$pidfile")
    [[ $pid =~ ^[0-9]+$ && $(cat "/proc/$pid/comm" 2>/dev/null) == "$(basename "$pidfile" .pid)" ]] \
        && echo "$pid"
}

# wait_for SECONDS COMMAND...: retry COMMAND every 0.2 s until it succeeds.
wait_for() {
    local deadline=$((SECONDS + $1)); shift
    until "$@" >/dev/null 2>&1; do
        ((SECONDS < deadline)) || return 1
        sleep 0.2
    done
}

# launch OUTFILE COMMAND...: start COMMAND in the background with stdin from
# /dev/null, stdout and stderr to OUTFILE, and no other file descriptor of ours:
# a daemon that kept the caller's pipe open would leave a CI runner waiting for
# end-of-file forever.  $! is the pid of COMMAND.
launch() {
    local outfile=$1; shift
    (
        for fd in "/proc/$BASHPID/fd"/*; do
            fd=${fd##*/}
            if ((fd > 2)); then eval "exec $fd>&-"; fi
        done
        exec "$@" </dev/null >>"$outfile" 2>&1
    ) &
}

# stop_pids PIDFILE...: SIGTERM to each daemon, then up to 30 s for all of them to
# exit cleanly, then SIGKILL for any that are left.
stop_pids() {
    local -A pids=()
    local pidfile name pid
    for pidfile in "$@"; do
        name=$(basename "$pidfile" .pid)
        if pid=$(live_pid "$pidfile"); then
            kill -TERM "$pid"
            pids[$name]=$pid
        else
            log "$name: not running"
        fi
    done
    local deadline=$((SECONDS + 30))
    for name in "${!pids[@]}"; do
        pid=${pids[$name]}
        while kill -0 "$pid" 2>/dev/null; do
            if ((SECONDS >= deadline)); then
                log "$name (pid $pid) ignored SIGTERM for 30 s: killing it"
                kill -KILL "$pid" 2>/dev/null || true
                break
            fi
            sleep 0.1
        done
        log "$name: stopped"
    done
}

# --- install -------------------------------------------------------------------

install_packages() {
    local status
    status=$(dpkg-query -W -f='${db:Status-Status}\n' "${PACKAGES[@]}" 2>/dev/null || true)
    if [[ $(grep -c '^installed$' <<<"$status") -eq ${#PACKAGES[@]} ]]; then
        return 0
    fi
    export DEBIAN_FRONTEND=noninteractive
    log "installing ${PACKAGES[*]}"
    # Refresh the package lists only when they cannot serve the install: a fresh
    # image has none, and old ones may name versions the mirror has dropped.
    if ! apt-cache show slurmctld >/dev/null 2>&1; then
        apt-get update -q
    fi
    local install=(apt-get install -y -q --no-install-recommends "${PACKAGES[@]}")
    if ! "${install[@]}"; then
        apt-get update -q
        "${install[@]}"
    fi
}

# --- config --------------------------------------------------------------------

# Refuse to clobber a config that someone else wrote.
check_ours() {
    if [[ -e $1 ]] && ! head -n 1 "$1" | grep -qF "$CONF_MARK"; then
        die "$1 exists and was not written by this script; move it away to use the rotsweep test cluster"
    fi
}

write_slurm_conf() {
    check_ours "$SLURM_CONF"
    # slurmd -C reports this machine's real CPUs, sockets, cores, threads and
    # memory (MB); the node is declared with exactly those, under the name localhost.
    local hardware
    hardware=$(slurmd -C | head -n 1 | sed 's/^NodeName=[^ ]* //')
    [[ $hardware == *CPUs=* && $hardware == *RealMemory=* ]] \
        || die "slurmd -C did not report CPUs and RealMemory: '$hardware'"
    mkdir -p "$(dirname "$SLURM_CONF")"
    cat >"$SLURM_CONF" <<EOF
$CONF_MARK start; rewritten on every start.
ClusterName=$CLUSTER_NAME
SlurmctldHost=$NODE
# Everything runs as root: a throwaway single-user test cluster.
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
# cred_expire also sets how long a requeued job waits before it may start again:
# 120 s by default, which would leave every requeue test idle for two minutes.
AuthInfo=cred_expire=10
CredType=cred/munge
MailProg=/bin/true

StateSaveLocation=$STATE_DIR/slurmctld
SlurmdSpoolDir=$STATE_DIR/slurmd
SlurmctldPidFile=$RUN_DIR/slurmctld.pid
SlurmdPidFile=$RUN_DIR/slurmd.pid
SlurmctldLogFile=$LOG_DIR/slurmctld.log
SlurmdLogFile=$LOG_DIR/slurmd.log

# No systemd and no delegated cgroup tree inside this container: find a job's
# processes through /proc, and bind no task to particular cores.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SwitchType=switch/none

# Hand out single CPUs and memory, so that several 1-CPU jobs share the node.
# Without DefMemPerCPU a job that asks for no memory would take all of it.
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU_Memory
DefMemPerCPU=1024
SchedulerType=sched/backfill
# Look at the queue every 2 s, not every 60 s: nothing but a periodic pass starts
# a requeued job once its wait is over.
SchedulerParameters=sched_interval=2

# Arrays may have indices 0..1000.  Small on purpose, as on many real clusters,
# so that rotsweep's splitting of large sweeps into several arrays gets exercised.
MaxArraySize=1001
# Batch jobs may be requeued (scontrol requeue; submitit on preemption/timeout).
JobRequeue=1
# The node returns to service by itself when its slurmd comes back.
ReturnToService=2
# Seconds from SIGTERM to SIGKILL when a job is cancelled or requeued.  submitit
# ignores SIGTERM, so each requeue waits this long.
KillWait=5

AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=$NODE
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none

NodeName=$NODE NodeAddr=127.0.0.1 $hardware State=UNKNOWN
PartitionName=$PARTITION Nodes=$NODE Default=YES MaxTime=INFINITE State=UP
EOF
}

write_dbd_conf() {
    check_ours "$DBD_CONF"
    # slurmdbd refuses a config that others can read: it holds the DB password.
    (umask 077; cat >"$DBD_CONF" <<EOF
$CONF_MARK start; rewritten on every start.
AuthType=auth/munge
DbdHost=$NODE
SlurmUser=root
PidFile=$RUN_DIR/slurmdbd.pid
LogFile=$LOG_DIR/slurmdbd.log
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$DB_PORT
StorageUser=slurm
StoragePass=$(<"$STATE_DIR/db.password")
StorageLoc=slurm_acct_db
EOF
    )
}

# --- daemons -------------------------------------------------------------------

munge_works() { munge -n | unmunge >/dev/null; }

start_munged() {
    if munge_works 2>/dev/null; then return 0; fi
    # The Debian package creates the key; make one if it is missing.
    [[ -s /etc/munge/munge.key ]] || runuser -u munge -- mungekey --create
    install -d -o munge -g munge -m 0755 /run/munge
    launch "$LOG_DIR/munged.out" runuser -u munge -- /usr/sbin/munged
    wait $! || die "munged failed to start; see $LOG_DIR/munged.out and /var/log/munge/munged.log"
    wait_for 10 munge_works || die "munged does not answer; see /var/log/munge/munged.log"
}

db_works() { mariadb --no-defaults --socket="$DB_SOCKET" -e 'SELECT 1'; }

start_mariadbd() {
    if live_pid "$RUN_DIR/mariadbd.pid" >/dev/null; then return 0; fi
    local fresh=0
    if [[ ! -s $STATE_DIR/db.password ]]; then
        fresh=1
        rm -rf "$STATE_DIR/mysql"
        mariadb-install-db --no-defaults --user=root --datadir="$STATE_DIR/mysql" \
            --auth-root-authentication-method=socket --skip-test-db \
            >"$LOG_DIR/mariadb-install.log" 2>&1 \
            || die "mariadb-install-db failed; see $LOG_DIR/mariadb-install.log"
    fi
    # mariadbd stays in the foreground, so it is put in a session of its own.
    # Commits reach the disk once a second instead of at every transaction: this
    # database only holds test accounting.
    launch "$LOG_DIR/mariadbd.log" setsid mariadbd --no-defaults --user=root \
        --datadir="$STATE_DIR/mysql" --pid-file="$RUN_DIR/mariadbd.pid" \
        --bind-address=127.0.0.1 --port=$DB_PORT --socket="$DB_SOCKET" \
        --skip-name-resolve --skip-log-bin --performance-schema=OFF \
        --innodb-buffer-pool-size=64M --innodb-flush-log-at-trx-commit=2
    wait_for 30 db_works || die "mariadbd does not answer; see $LOG_DIR/mariadbd.log"
    if ((fresh)); then
        # root may log in only through the unix socket; slurmdbd comes over TCP.
        local password
        password=$(head -c 18 /dev/urandom | base64 | tr -d '/+=')
        mariadb --no-defaults --socket="$DB_SOCKET" -e "
            CREATE USER 'slurm'@'127.0.0.1' IDENTIFIED BY '$password';
            GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';"
        (umask 077; echo "$password" >"$STATE_DIR/db.password")
    fi
}

# start_slurm_daemon NAME ARGS...: a Slurm daemon forks into the background and
# its first process exits once it is running.
start_slurm_daemon() {
    local name=$1 pidfile=$RUN_DIR/$1.pid
    if live_pid "$pidfile" >/dev/null; then return 0; fi
    launch "$LOG_DIR/$name.out" "$@"
    wait $! || die "$name failed to start; see $LOG_DIR/$name.out and $LOG_DIR/$name.log"
    wait_for 10 live_pid "$pidfile" || die "$name exited right after starting; see $LOG_DIR/$name.log"
}

# The cluster is up when the controller answers and the node can take jobs.
node_ready() {
    local state
    state=$(sinfo --noheader --partition="$PARTITION" --nodes="$NODE" --format=%t 2>/dev/null) || return 1
    [[ $state =~ ^(idle|mix|alloc)$ ]]
}

# Run one batch job the way submitit does (sbatch, and srun inside it), and wait
# until sacct records it as COMPLETED: that proves munge, slurmctld, slurmd,
# slurmdbd and the database all work.  (Polling sacct is faster than
# `sbatch --wait`, which looks only every few seconds.)
smoke_test() {
    local job_id state="" deadline=$((SECONDS + 30))
    job_id=$(sbatch --parsable --partition="$PARTITION" --job-name=cluster-smoke \
             --time=1 --mem=64M --output=/dev/null --wrap="srun hostname" 2>&1) \
        || die "sbatch of a test job failed: $job_id; see $LOG_DIR/slurmctld.log"
    until [[ $state == COMPLETED ]]; do
        if ((SECONDS >= deadline)); then
            die "test job $job_id (sbatch --wrap='srun hostname') not COMPLETED in sacct after 30 s (state: '${state:-none}'); see $LOG_DIR/slurmd.log and $LOG_DIR/slurmdbd.log"
        fi
        sleep 0.2
        state=$(sacct --noheader --parsable2 --allocations --format=State --jobs="$job_id" 2>/dev/null) || true
    done
}

DAEMONS=(mariadbd slurmdbd slurmctld slurmd)

all_up() {
    munge_works 2>/dev/null || return 1
    local d
    for d in "${DAEMONS[@]}"; do
        live_pid "$RUN_DIR/$d.pid" >/dev/null || return 1
    done
    node_ready
}

# --- commands ------------------------------------------------------------------

cmd_start() {
    [[ $EUID -eq 0 ]] || die "start needs root: it installs packages and starts daemons"
    if all_up; then
        log "already up"
        return 0
    fi
    local t0=$SECONDS
    install_packages
    local t_install=$((SECONDS - t0))
    mkdir -p "$STATE_DIR"/{slurmctld,slurmd} "$LOG_DIR" "$RUN_DIR"
    write_slurm_conf
    start_munged
    start_mariadbd
    write_dbd_conf
    start_slurm_daemon slurmdbd
    # slurmctld registers the cluster with slurmdbd when it starts: wait for it.
    wait_for 30 sacctmgr --noheader list cluster || die "slurmdbd does not answer; see $LOG_DIR/slurmdbd.log"
    start_slurm_daemon slurmctld
    # -N: the node is "localhost", whatever this machine's hostname is.
    start_slurm_daemon slurmd -N "$NODE"
    if ! wait_for "$NODE_READY_TIMEOUT_S" node_ready; then
        sinfo >&2 || true
        die "node $NODE is not idle after ${NODE_READY_TIMEOUT_S} s; see $LOG_DIR/slurmctld.log and $LOG_DIR/slurmd.log"
    fi
    smoke_test
    log "up in $((SECONDS - t0)) s (installing packages: ${t_install} s); logs in $LOG_DIR"
}

cmd_stop() {
    [[ $EUID -eq 0 ]] || die "stop needs root"
    # Node and controller first, so that the controller's last accounting records
    # still reach slurmdbd; then slurmdbd; then what it needs.  Running jobs are
    # left alone: their state is saved and the next start takes them up again.
    stop_pids "$RUN_DIR/slurmd.pid" "$RUN_DIR/slurmctld.pid"
    stop_pids "$RUN_DIR/slurmdbd.pid"
    stop_pids "$RUN_DIR/mariadbd.pid" /run/munge/munged.pid
}

cmd_status() {
    local d pid up=1
    if munge_works 2>/dev/null; then echo "munged     running"; else echo "munged     stopped"; up=0; fi
    for d in "${DAEMONS[@]}"; do
        if pid=$(live_pid "$RUN_DIR/$d.pid"); then
            printf '%-10s running (pid %s)\n' "$d" "$pid"
        else
            printf '%-10s stopped\n' "$d"
            up=0
        fi
    done
    if node_ready; then sinfo --partition="$PARTITION"; else up=0; fi
    echo "logs: $LOG_DIR/{slurmctld,slurmd,slurmdbd,mariadbd}.log /var/log/munge/munged.log"
    if ((up)); then echo "cluster: up"; else echo "cluster: down"; return 1; fi
}

case ${1:-} in
    start) cmd_start ;;
    stop) cmd_stop ;;
    status) cmd_status ;;
    *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
