#!/usr/bin/env bash
# Stop the daemons bring_up.sh started (by the pids they recorded in STATE_DIR), newest first.
set -uo pipefail
STATE=$(realpath -m "${1:?usage: tear_down.sh STATE_DIR}")
export SLURM_CONF="$STATE/etc/slurm.conf"
scancel --user "$(id -un)" 2>/dev/null
for pidfile in run/slurmd.pid run/slurmctld.pid run/slurmdbd.pid mysql-run/mysqld.pid munge-run/munged.pid; do
    [[ -s $STATE/$pidfile ]] || continue
    pid=$(cat "$STATE/$pidfile")
    kill "$pid" 2>/dev/null || continue
    for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null
done
[[ $(readlink /etc/slurm/slurm.conf 2>/dev/null) == "$STATE/etc/slurm.conf" ]] && rm -f /etc/slurm/slurm.conf
# The daemons' run folders under /run (see bring_up.sh).
run_dir=$(dirname "$(readlink "$STATE/munge-run" 2>/dev/null || echo /nonexistent/x)")
[[ $run_dir == /run/covip-slurm.* ]] && rm -rf "$run_dir"
exit 0
