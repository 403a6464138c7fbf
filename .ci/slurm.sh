#!/usr/bin/env bash
# A one-node Slurm cluster on localhost, for the tests of `--executor slurm`
# (tests/test_slurm.py): munged (+ mariadbd + slurmdbd with SLURM_ACCOUNTING=1) +
# slurmctld + slurmd, as root, without systemd. .ci/run starts it before the tests.
# Idempotent: installs Debian's packages if missing, (re)starts only daemons that are
# not running, restarts the Slurm daemons if the generated config changed.
# Seen working on Debian 12 (Slurm 22.05.8, munge 0.5.15).
#
# Two partitions: debug (the default) and high, whose jobs preempt debug's (requeued:
# PreemptMode=REQUEUE, GraceTime 0: every process of the preempted job gets SIGTERM).
#
# Env overrides:
#   SLURM_ACCOUNTING=0     (default 0) 1: slurmdbd + MariaDB, so `sacct` works
#   SLURM_GRACE_TIME=0     preemption GraceTime (s) of partition "debug" (see below)
#   SLURM_KILL_WAIT=10     SIGTERM -> SIGKILL delay (s) on scancel/requeue/timeout/preempt
#   SLURM_WAIT_S=60        how long to wait for the node to become idle
#   SLURM_FORCE_RESTART=1  restart the Slurm daemons even if config unchanged
set -euo pipefail

ACCOUNTING=${SLURM_ACCOUNTING:-0}
GRACE_TIME=${SLURM_GRACE_TIME:-0}
KILL_WAIT=${SLURM_KILL_WAIT:-10}
SLURM_WAIT_S=${SLURM_WAIT_S:-60}
CONF_DIR=/etc/slurm
LOG_DIR=/var/log/slurm
RUN_DIR=/run/slurm
CTLD_SPOOL=/var/spool/slurmctld
SLURMD_SPOOL=/var/spool/slurmd
DB_PASS=slurmdbpass   # local-only MariaDB user 'slurm'@'localhost'

log() { echo "[start-slurm $(date +%T)] $*" >&2; }
[ "$(id -u)" = 0 ] || { echo "must run as root" >&2; exit 1; }

# ---------------------------------------------------------------- 1. install
PKGS="slurmctld slurmd slurm-client munge"
[ "$ACCOUNTING" = 1 ] && PKGS="$PKGS slurmdbd mariadb-server"
MISSING=""
for p in $PKGS; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || MISSING="$MISSING $p"
done
if [ -n "$MISSING" ]; then
  log "installing:$MISSING"
  export DEBIAN_FRONTEND=noninteractive
  apt-cache show slurmctld >/dev/null 2>&1 || apt-get update -q
  # In containers policy-rc.d denies service start during install ("invoke-rc.d: policy-rc.d
  # denied execution of start") - harmless, we start the daemons ourselves below.
  apt-get install -y -q --no-install-recommends $MISSING
fi

# ---------------------------------------------------------------- helpers
# /proc/PID/comm, not /proc/PID/exe: Debian's /usr/sbin/slurmctld is a symlink to slurmctld-wlm
pid_alive() {  # pid_alive PIDFILE COMM
  local f=$1 comm=$2 pid
  [ -s "$f" ] || return 1
  pid=$(cat "$f" 2>/dev/null) || return 1
  [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null || return 1
  [ "$(cat /proc/$pid/comm 2>/dev/null)" = "$comm" ]
}
stop_pidfile() {  # stop_pidfile PIDFILE COMM
  local f=$1 comm=$2 pid i
  pid_alive "$f" "$comm" || { rm -f "$f"; return 0; }
  pid=$(cat "$f")
  kill "$pid" 2>/dev/null || true
  for i in $(seq 1 75); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
  kill -0 "$pid" 2>/dev/null && kill -9 "$pid" 2>/dev/null || true
  rm -f "$f"
}
# write file only if content differs; returns 0 if it changed
write_if_changed() {  # write_if_changed DEST MODE  (content on stdin)
  local dest=$1 mode=$2 tmp; tmp=$(mktemp)
  cat > "$tmp"
  if cmp -s "$tmp" "$dest"; then rm -f "$tmp"; return 1; fi
  install -m "$mode" "$tmp" "$dest"; rm -f "$tmp"; log "wrote $dest"; return 0
}

# ---------------------------------------------------------------- 2. munge
install -d -o munge -g munge -m 0755 /run/munge
install -d -o munge -g munge -m 0700 /var/log/munge /etc/munge
install -d -o munge -g munge -m 0711 /var/lib/munge
if [ ! -s /etc/munge/munge.key ]; then   # the Debian package normally creates one
  log "creating munge key"
  mungekey --create --keyfile=/etc/munge/munge.key --force
fi
chown munge:munge /etc/munge/munge.key; chmod 0400 /etc/munge/munge.key

MUNGE_PID=/run/munge/munged.pid
if pid_alive "$MUNGE_PID" munged && munge -n </dev/null | unmunge >/dev/null 2>&1; then
  log "munged already running (pid $(cat $MUNGE_PID))"
else
  stop_pidfile "$MUNGE_PID" munged
  rm -f /run/munge/munge.socket.2 /run/munge/munge.socket.2.lock
  log "starting munged"
  runuser -u munge -- /usr/sbin/munged --pid-file="$MUNGE_PID"   # munged refuses to run as root
  for i in $(seq 1 50); do munge -n </dev/null | unmunge >/dev/null 2>&1 && break; sleep 0.1; done
  munge -n </dev/null | unmunge >/dev/null || { log "munge not working"; exit 1; }
fi

install -d -m 0755 "$CONF_DIR" "$LOG_DIR" "$RUN_DIR" "$CTLD_SPOOL" "$SLURMD_SPOOL"
HOST=$(hostname -s)
NCPU=$(nproc)
# RealMemory from slurmd -C, minus 1 GiB headroom (node gets drained if it has less than configured)
MEM=$(slurmd -C 2>/dev/null | sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p')
MEM=${MEM:-2048}; [ "$MEM" -gt 2048 ] && MEM=$((MEM - 1024))
CHANGED=0

# ---------------------------------------------------------------- 3. accounting (optional)
if [ "$ACCOUNTING" = 1 ]; then
  MYSQL_PID=/run/mysqld/mysqld.pid
  install -d -o mysql -g mysql -m 0755 /run/mysqld
  if pid_alive "$MYSQL_PID" mariadbd && mariadb-admin ping >/dev/null 2>&1; then
    log "mariadbd already running (pid $(cat $MYSQL_PID))"
  else
    stop_pidfile "$MYSQL_PID" mariadbd
    log "starting mariadbd"
    setsid /usr/sbin/mariadbd --user=mysql --pid-file="$MYSQL_PID" \
      --socket=/run/mysqld/mysqld.sock --bind-address=127.0.0.1 \
      >>"$LOG_DIR/mariadb.log" 2>&1 </dev/null &
    for i in $(seq 1 100); do mariadb-admin ping >/dev/null 2>&1 && break; sleep 0.2; done
    mariadb-admin ping >/dev/null || { log "mariadb not up"; tail -5 "$LOG_DIR/mariadb.log"; exit 1; }
  fi
  mariadb -e "CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY '${DB_PASS}';
              ALTER USER 'slurm'@'localhost' IDENTIFIED BY '${DB_PASS}';
              GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost'; FLUSH PRIVILEGES;"

  write_if_changed "$CONF_DIR/slurmdbd.conf" 0600 <<EOF && CHANGED=1 || true
# generated by start-slurm.sh
AuthType=auth/munge
DbdHost=localhost
DbdPort=6819
SlurmUser=root
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageUser=slurm
StoragePass=${DB_PASS}
StorageLoc=slurm_acct_db
LogFile=${LOG_DIR}/slurmdbd.log
PidFile=${RUN_DIR}/slurmdbd.pid
DebugLevel=info
EOF
  ACCT_CONF="AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStoragePort=6819"
else
  ACCT_CONF="# no slurmdbd: sacct does NOT work ('Slurm accounting storage is disabled')
AccountingStorageType=accounting_storage/none"
fi

# ---------------------------------------------------------------- 4. slurm.conf
write_if_changed "$CONF_DIR/slurm.conf" 0644 <<EOF && CHANGED=1 || true
# generated by start-slurm.sh -- single-node test cluster, all daemons run as root
ClusterName=localcluster
SlurmctldHost=${HOST}(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
# a requeued job may start again only after cred_expire+1 s (default 120)
AuthInfo=cred_expire=10
MpiDefault=none
MailProg=/bin/true
SlurmctldPort=6817
SlurmdPort=6818
StateSaveLocation=${CTLD_SPOOL}
SlurmdSpoolDir=${SLURMD_SPOOL}
SlurmctldPidFile=${RUN_DIR}/slurmctld.pid
SlurmdPidFile=${RUN_DIR}/slurmd.pid
SlurmctldLogFile=${LOG_DIR}/slurmctld.log
SlurmdLogFile=${LOG_DIR}/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info

# no cgroups (no systemd / container-friendly)
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/linux
JobAcctGatherFrequency=30

${ACCT_CONF}
# finished jobs also go to a text file, and stay visible in 'scontrol show job' for 1 h
JobCompType=jobcomp/filetxt
JobCompLoc=${LOG_DIR}/jobcomp.log
MinJobAge=3600
MaxJobCount=100000

# fast scheduling
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=1,bf_interval=1,sched_min_interval=0
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
MessageTimeout=10
SlurmctldTimeout=30
SlurmdTimeout=30
InactiveLimit=0
KillWait=${KILL_WAIT}
Waittime=0
ReturnToService=2
JobRequeue=1

# preemption: jobs in partition "high" requeue jobs in partition "debug".
#  GraceTime=0: all job processes get SIGCONT+SIGTERM at once, SIGKILL after KillWait,
#               job is requeued whatever its exit code.
#  GraceTime>0: only job steps (srun) get SIGTERM -- or the job's --signal, thanks to
#               preempt_send_user_signal (submitit: USR2) -- SIGKILL after GraceTime+KillWait.
PreemptType=preempt/partition_prio
PreemptMode=REQUEUE
SlurmctldParameters=preempt_send_user_signal

NodeName=${HOST} NodeAddr=127.0.0.1 CPUs=${NCPU} RealMemory=${MEM} State=UNKNOWN
PartitionName=debug Nodes=${HOST} Default=YES MaxTime=INFINITE State=UP PriorityTier=1 PreemptMode=REQUEUE GraceTime=${GRACE_TIME}
PartitionName=high  Nodes=${HOST} Default=NO  MaxTime=INFINITE State=UP PriorityTier=10 PreemptMode=OFF
EOF
[ "${SLURM_FORCE_RESTART:-0}" = 1 ] && CHANGED=1

# ---------------------------------------------------------------- 5. slurm daemons
CTLD_PID=$RUN_DIR/slurmctld.pid
SLURMD_PID=$RUN_DIR/slurmd.pid
DBD_PID=$RUN_DIR/slurmdbd.pid
if [ "$CHANGED" = 1 ]; then
  stop_pidfile "$SLURMD_PID" slurmd
  stop_pidfile "$CTLD_PID" slurmctld
  stop_pidfile "$DBD_PID" slurmdbd
fi
[ "$ACCOUNTING" = 1 ] || stop_pidfile "$DBD_PID" slurmdbd

start_daemon() {  # start_daemon NAME PIDFILE  (all three daemonize themselves)
  local name=$1 pidf=$2 i
  if pid_alive "$pidf" "$name"; then log "$name already running (pid $(cat $pidf))"; return; fi
  rm -f "$pidf"; log "starting $name"
  "/usr/sbin/$name"
  for i in $(seq 1 25); do pid_alive "$pidf" "$name" && break; sleep 0.2; done
  sleep 0.3
  pid_alive "$pidf" "$name" || { log "$name died:"; tail -5 "$LOG_DIR/$name.log"; exit 1; }
}

if [ "$ACCOUNTING" = 1 ]; then
  start_daemon slurmdbd "$DBD_PID"
  # slurmdbd daemonizes before it has connected to MariaDB; wait until it answers
  for i in $(seq 1 100); do sacctmgr -n list cluster >/dev/null 2>&1 && break; sleep 0.2; done
  sacctmgr -n list cluster >/dev/null 2>&1 || { log "slurmdbd not answering"; tail -5 $LOG_DIR/slurmdbd.log; exit 1; }
fi
start_daemon slurmctld "$CTLD_PID"   # keeps saved state: jobs survive restarts
for i in $(seq 1 100); do scontrol ping 2>/dev/null | grep -q UP && break; sleep 0.2; done
scontrol ping | grep -q UP || { log "slurmctld not responding"; tail -20 $LOG_DIR/slurmctld.log; exit 1; }
start_daemon slurmd "$SLURMD_PID"

# ---------------------------------------------------------------- 6. wait for idle
deadline=$(( $(date +%s) + SLURM_WAIT_S ))
while :; do
  st=$(sinfo -h -n "$HOST" -o %t 2>/dev/null | head -1 || true)
  case "$st" in
    idle|mix|alloc|comp) break ;;
    down*|drain*|drng*|fail*)
      scontrol update NodeName="$HOST" State=RESUME >/dev/null 2>&1 || true ;;
  esac
  if [ "$(date +%s)" -ge "$deadline" ]; then
    log "node not ready (state='$st')"; sinfo -R; tail -20 $LOG_DIR/slurmd.log; exit 1
  fi
  sleep 0.5
done
if [ "$ACCOUNTING" = 1 ]; then   # ctld registers the cluster with slurmdbd on startup
  for i in $(seq 1 50); do sacct -n -X -S now >/dev/null 2>&1 && break; sleep 0.2; done
  sacct -n -X -S now >/dev/null || { log "sacct not working"; tail -5 $LOG_DIR/slurmdbd.log; exit 1; }
fi
log "ready: node $HOST state=$st accounting=$ACCOUNTING"
sinfo
