#!/usr/bin/env bash
# Bring up a one-node SLURM cluster on this machine, by hand (no systemd): munge, MariaDB, slurmdbd
# (job accounting, which the Snakemake SLURM plugin reads through sacct), slurmctld and slurmd, all
# configured from files in STATE_DIR. Installs Debian's packages first if they are missing.
#
#   tests/slurm/bring_up.sh STATE_DIR        then   export SLURM_CONF=STATE_DIR/etc/slurm.conf
#   tests/slurm/tear_down.sh STATE_DIR
#
# Needs root. Exit status 3: cannot provision here (not root, packages not installable, or daemons unable
# to run as their users), so the caller may skip.
set -euo pipefail

STATE=$(realpath -m "${1:?usage: bring_up.sh STATE_DIR}")
[[ $(id -u) == 0 ]] || { echo "bring_up.sh: needs root to install and start the SLURM daemons" >&2; exit 3; }

need=()
for bin in sinfo slurmctld slurmd slurmdbd munged mariadbd sacct; do
    command -v "$bin" >/dev/null || need+=("$bin")
done
if ((${#need[@]})); then
    command -v apt-get >/dev/null || { echo "bring_up.sh: ${need[*]} missing and no apt-get to install them" >&2; exit 3; }
    echo "installing slurm-wlm slurmdbd munge mariadb-server (missing: ${need[*]})"
    export DEBIAN_FRONTEND=noninteractive
    if ! { apt-get update -qq && apt-get install -y -qq slurm-wlm slurmdbd munge mariadb-server >/dev/null; }; then
        echo "bring_up.sh: cannot install slurm-wlm slurmdbd munge mariadb-server on this machine (apt-get failed)" >&2
        exit 3
    fi
fi
# The daemons run as their own users and open /dev/null (munged at start): some sandboxes deny it.
if ! runuser -u munge -- sh -c ': </dev/null >/dev/null' 2>/dev/null; then
    echo "bring_up.sh: service users cannot open /dev/null on this machine ($(ls -l /dev/null)), so munged cannot start" >&2
    exit 3
fi

mkdir -p "$STATE"/{etc,log,run,spool/ctld,spool/d}
# munged and mariadbd run as their own users, who may not be able to enter STATE_DIR (pytest's
# temporary folders are private to root): their run folders live under /run, linked from STATE_DIR.
RUN=$(mktemp -d /run/covip-slurm.XXXXXX)
chmod 755 "$RUN"
mkdir -p "$RUN/munge" "$RUN/mysql"
ln -sfn "$RUN/munge" "$STATE/munge-run"
ln -sfn "$RUN/mysql" "$STATE/mysql-run"
NODE=$(hostname -s)
# slurmd -C reports what this machine really has; keep a little memory back for the OS.
read -r CPUS MEM < <(slurmd -C | awk '/^NodeName/ {for (i = 1; i <= NF; i++) {split($i, kv, "="); v[kv[1]] = kv[2]} print v["CPUs"], v["RealMemory"]}')
MEM=$((MEM * 9 / 10))
DB_PASS=covip-test

# -- munge: the key comes with Debian's package; run the daemon as its own user.
[[ -s /etc/munge/munge.key ]] || { mungekey --create --force 2>/dev/null || create-munge-key -f; }
# Its socket stays at the default path, which every SLURM client and daemon looks at.
mkdir -p /run/munge
chown munge:munge /etc/munge/munge.key /run/munge "$STATE/munge-run"
chmod 0700 "$STATE/munge-run"
runuser -u munge -- munged --pid-file="$RUN/munge/munged.pid" --log-file="$RUN/munge/munged.log" --force

# -- MariaDB for slurmdbd, on a private socket and port.
chown mysql:mysql "$RUN/mysql"
[[ -d /var/lib/mysql/mysql ]] || mariadb-install-db --user=mysql --datadir=/var/lib/mysql >/dev/null
setsid mariadbd --user=mysql --datadir=/var/lib/mysql --socket="$RUN/mysql/mysqld.sock" --port=3307 \
    --bind-address=127.0.0.1 --pid-file="$RUN/mysql/mysqld.pid" --log-error="$RUN/mysql/mariadb.log" </dev/null >/dev/null 2>&1 &
for _ in $(seq 100); do [[ -S $RUN/mysql/mysqld.sock ]] && break; sleep 0.1; done
mariadb --socket="$RUN/mysql/mysqld.sock" -e "
    CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY '$DB_PASS';
    GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';"

cat >"$STATE/etc/slurmdbd.conf" <<EOF
AuthType=auth/munge
DbdHost=localhost
DbdPort=6819
SlurmUser=root
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=3307
StorageUser=slurm
StoragePass=$DB_PASS
StorageLoc=slurm_acct_db
PidFile=$STATE/run/slurmdbd.pid
LogFile=$STATE/log/slurmdbd.log
EOF
chmod 600 "$STATE/etc/slurmdbd.conf"

cat >"$STATE/etc/slurm.conf" <<EOF
ClusterName=covip
SlurmctldHost=$NODE
SlurmUser=root
AuthType=auth/munge
SlurmctldPort=6817
SlurmdPort=6818
StateSaveLocation=$STATE/spool/ctld
SlurmdSpoolDir=$STATE/spool/d
SlurmctldPidFile=$STATE/run/slurmctld.pid
SlurmdPidFile=$STATE/run/slurmd.pid
SlurmctldLogFile=$STATE/log/slurmctld.log
SlurmdLogFile=$STATE/log/slurmd.log
# No cgroups in a container: track processes by their parent pids.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=127.0.0.1
AccountingStoragePort=6819
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
# Reject a job the partition can never run, instead of letting it pend forever.
EnforcePartLimits=ALL
ReturnToService=2
MpiDefault=none
SchedulerType=sched/backfill
MinJobAge=300
NodeName=$NODE CPUs=$CPUS RealMemory=$MEM State=UNKNOWN
PartitionName=debug Nodes=$NODE Default=YES MaxTime=INFINITE State=UP
# A second partition, not the default: the tests submit to it with SBATCH_PARTITION, which the
# workflow must honour (the SLURM plugin would otherwise pass -p debug).
PartitionName=covip Nodes=$NODE Default=NO MaxTime=INFINITE State=UP
EOF
cat >"$STATE/etc/cgroup.conf" <<EOF
CgroupAutomount=no
ConstrainCores=no
ConstrainRAMSpace=no
EOF
export SLURM_CONF="$STATE/etc/slurm.conf"
# Commands inside a job do not see SLURM_CONF (the Snakemake jobstep plugin drops SLURM_* variables
# before its srun), so the default path must lead to this cluster too; never replace a real one.
mkdir -p /etc/slurm
if [[ -e /etc/slurm/slurm.conf && ! -L /etc/slurm/slurm.conf ]]; then
    echo "bring_up.sh: /etc/slurm/slurm.conf exists (a configured SLURM?); not replacing it" >&2
    exit 1
fi
ln -sfn "$SLURM_CONF" /etc/slurm/slurm.conf

slurmdbd  # reads slurmdbd.conf beside $SLURM_CONF
# Every client call is bounded: sacctmgr retries for minutes while slurmdbd is not up.
up=
for _ in $(seq 60); do timeout 3 sacctmgr -n list cluster >/dev/null 2>&1 && { up=1; break; }; sleep 0.2; done
[[ -n $up ]] || { echo "bring_up.sh: slurmdbd did not come up" >&2; tail -n 20 "$STATE/log/slurmdbd.log" >&2; exit 1; }
timeout 10 sacctmgr -i add cluster covip >/dev/null 2>&1 || true
timeout 10 sacctmgr -i add account covip Description=tests Organization=covip >/dev/null 2>&1 || true
timeout 10 sacctmgr -i add user "$(id -un)" Account=covip >/dev/null 2>&1 || true
slurmctld -f "$SLURM_CONF"
slurmd -f "$SLURM_CONF"

for _ in $(seq 300); do
    state=$(timeout 3 sinfo -h -n "$NODE" -o %t 2>/dev/null || true)
    [[ $state == idle ]] && { echo "slurm is up: node $NODE ($CPUS CPUs, $MEM MB) idle"; exit 0; }
    sleep 0.1
done
echo "bring_up.sh: node $NODE never became idle (state '${state:-none}'); see $STATE/log" >&2
tail -n 20 "$STATE"/log/*.log "$STATE"/*-run/*.log >&2 || true
exit 1
