#!/bin/bash
# parsl-dragon: bind one MPI rank started by mpiexec to its own GPUs, then run its command.
#
#   $PARSL_MPI_PREFIX <command>  ==  mpiexec -n N -ppn R -hosts ... bash gpu_bind.sh <command>
#
# for an MPI task with pmi="mpiexec" and gpus_per_rank > 0 (task/prefix.py). The worker
# exports the task's devices per node (PARSL_DRAGON_RANK_GPUS, "host=id,id;host=id,id", the
# ids of core/accelerators.py in slot-table order) and PARSL_DRAGON_GPUS_PER_RANK; this rank
# takes the consecutive group of its local rank on its node and sets CUDA_VISIBLE_DEVICES,
# ROCR_VISIBLE_DEVICES and ZE_AFFINITY_MASK to it, as Dragon-started ranks get them.
#
# The local rank comes from the launcher: MPI_LOCALRANKID (MPICH Hydra), PALS_LOCAL_RANKID
# (Cray PALS), OMPI_COMM_WORLD_LOCAL_RANK (Open MPI), PMI_LOCAL_RANK, SLURM_LOCALID. The node
# is found by its short host name among the task's hosts (a one-node task needs no match). A
# rank that cannot tell either fails with exit 1 and says why: it never runs on devices that
# may be another task's.
program=parsl-dragon-gpu-bind

fail() {
    printf '%s: %s\n' "$program" "$1" >&2
    exit 1
}

[ "$#" -gt 0 ] || fail "no command to run"
per=${PARSL_DRAGON_GPUS_PER_RANK:-}
[[ $per =~ ^[1-9][0-9]*$ ]] || fail "PARSL_DRAGON_GPUS_PER_RANK is not set to a count (not inside a GPU MPI task of DragonExecutor?)"
[ -n "${PARSL_DRAGON_RANK_GPUS:-}" ] || fail "PARSL_DRAGON_RANK_GPUS is not set (not inside a GPU MPI task of DragonExecutor?)"

local_rank=${MPI_LOCALRANKID:-${PALS_LOCAL_RANKID:-${OMPI_COMM_WORLD_LOCAL_RANK:-${PMI_LOCAL_RANK:-${SLURM_LOCALID:-}}}}}
[[ $local_rank =~ ^[0-9]+$ ]] || fail "cannot tell this rank's local rank: none of MPI_LOCALRANKID, PALS_LOCAL_RANKID, OMPI_COMM_WORLD_LOCAL_RANK, PMI_LOCAL_RANK, SLURM_LOCALID is set by this mpiexec"

IFS=';' read -r -a nodes <<<"$PARSL_DRAGON_RANK_GPUS"
devices=""
if [ "${#nodes[@]}" -eq 1 ]; then
    devices=${nodes[0]#*=}
else
    here=$(uname -n)
    here=${here%%.*}
    for entry in "${nodes[@]}"; do
        host=${entry%%=*}
        if [ "${host%%.*}" = "$here" ]; then
            devices=${entry#*=}
            break
        fi
    done
    [ -n "$devices" ] || fail "this node ($here) is not among the task's hosts in PARSL_DRAGON_RANK_GPUS"
fi

IFS=',' read -r -a ids <<<"$devices"
first=$((local_rank * per))
[ "$((first + per))" -le "${#ids[@]}" ] || fail "local rank $local_rank needs devices $first..$((first + per - 1)) of this node's ${#ids[@]} (${devices})"
mine=$(IFS=','; echo "${ids[*]:first:per}")
export CUDA_VISIBLE_DEVICES=$mine ROCR_VISIBLE_DEVICES=$mine ZE_AFFINITY_MASK=$mine
exec "$@"
