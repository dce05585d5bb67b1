#!/usr/bin/env bash
# Start a 2-node Slurm cluster on this one machine, each "node" in its own network namespace.
# For the multi-node tests (tests/integration/test_multinode.py). Idempotent. Needs root.
#
#   scripts/slurm/multinode-up.sh          start (or confirm) the cluster; print its environment
#   scripts/slurm/multinode-up.sh --env    print the environment only (exit 1 if the cluster is not up)
#
# Layout (facts from shared/DESIGN.md): network namespaces pdmn-ctl, pdmn-node1, pdmn-node2
# (`ip netns`), joined by a bridge inside pdmn-ctl; addresses exist ONLY inside these
# namespaces (10.77.0.0/24: ctl .1, nodeN .1N); no default route; the root namespace gets
# no interface and no address. slurmctld runs in pdmn-ctl (UTS hostname "ctl"); one slurmd
# per node namespace, started with `nsenter --net` (not `ip netns exec`, which hides the
# cgroup fs) inside its own UTS (hostname nodeN) and mount namespace (own tmpfs /dev/shm,
# own /etc/hosts naming the cluster's hosts). A TaskProlog exports a per-node POD_UID, so
# Dragon derives distinct host ids (the namespaces share the kernel's boot_id).
#
# Clients (sbatch, squeue, a Parsl driver) must run inside pdmn-ctl with SLURM_CONF set:
#   nsenter --net=/run/netns/pdmn-ctl env SLURM_CONF=/run/parsl-dragon-mn/slurm.conf squeue
# The cluster is separate from scripts/slurm/up.sh's (own config, ports in its own
# namespaces, ClusterName parsldragonmn, job ids from 500000).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=multinode-common.sh
source "$HERE/multinode-common.sh"

if [[ "${1:-}" == "--env" ]]; then
    mn_ready || exit 1
    mn_print_env
    exit 0
fi
if [[ "${1:-}" == -h || "${1:-}" == --help ]]; then
    sed -n '2,22p' "${BASH_SOURCE[0]}"; exit 0
fi
[[ "$(id -u)" == 0 ]] || die "must run as root (network namespaces, slurmd)"
for tool in ip nsenter unshare mount; do
    command -v "$tool" >/dev/null 2>&1 || die "$tool is missing (iproute2/util-linux)"
done

if mn_ready; then
    say "already running: nodes $(mn_nodes | tr '\n' ' ')idle"
    mn_print_env
    exit 0
fi

bash "$HERE/up.sh" --install-only  # packages + munged (shared with the single-node cluster)
mn_stop_daemons
mn_network
mn_write_config
mn_start_daemons
mn_wait_idle "${SLURM_UP_TIMEOUT:-90}"
say "started: $(mn_nodes | tr '\n' ' ')in partition $MN_PARTITION; state and logs in $MN_DIR"
mn_print_env
