#!/usr/bin/env bash
# Stop the namespace cluster started by scripts/slurm/multinode-up.sh and remove its namespaces. Idempotent.
#
# Cancels its jobs (so Epilogs run), stops its slurmd/slurmctld by their pid files, deletes the
# pdmn-* network namespaces (their mount/UTS namespaces go with the daemons) and the state dir.
# Logs are kept in /var/log/slurm/multinode-last/ for post-mortems.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=multinode-common.sh
source "$HERE/multinode-common.sh"

if [[ -e "$(mn_ns ctl)" ]] && mn_pid_alive "$MN_DIR/slurmctld.pid" slurmctld; then
    if [[ -n "$(timeout 10 nsenter --net="$(mn_ns ctl)" env SLURM_CONF="$MN_CONF" squeue -h -o %i 2>/dev/null || true)" ]]; then
        say "cancelling leftover jobs"
        timeout 15 nsenter --net="$(mn_ns ctl)" env SLURM_CONF="$MN_CONF" scancel --user=root 2>/dev/null || true
        for _ in $(seq 1 100); do
            [[ -z "$(timeout 10 nsenter --net="$(mn_ns ctl)" env SLURM_CONF="$MN_CONF" squeue -h -o %i 2>/dev/null || true)" ]] && break
            sleep 0.3
        done
    fi
fi
mn_stop_daemons
for ns in ctl $(mn_nodes); do
    [[ -e "$(mn_ns "$ns")" ]] && ip netns del "$MN_NS_PREFIX-$ns" 2>/dev/null || true
done
if [[ -d "$MN_DIR" ]]; then
    mkdir -p /var/log/slurm/multinode-last
    cp -f "$MN_DIR"/log/*.log /var/log/slurm/multinode-last/ 2>/dev/null || true
    rm -rf "$MN_DIR"
fi
say "stopped"
