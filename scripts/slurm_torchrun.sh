#!/usr/bin/env bash
# Multi-node SimCLR pre-training with torchrun under SLURM (PyTorch backend, NCCL, SyncBatchNorm).
#
#   sbatch scripts/slurm_torchrun.sh                      # 4 nodes x 8 GPUs, the defaults below
#   sbatch --nodes 2 --gpus-per-node 4 scripts/slurm_torchrun.sh --preset imagenet --data hdf5:/data/in.h5 ...
#
# One torchrun agent per node (srun --ntasks-per-node 1); the agents meet at a c10d rendezvous
# on the first node of the allocation and start GPUS workers each. Every worker runs
# `python -m simclr_xb.cli train --backend torch ...` with RANK/WORLD_SIZE/LOCAL_RANK set:
# --batch-size is the GLOBAL batch (divisible by NODES * GPUS), rank 0 logs and writes the run
# folder (put --out on a shared file system), and `--resume OUT` resumes every rank from the same
# checkpoint. SIMCLR_XB_DIST_TIMEOUT (seconds) bounds how long a collective waits for a missing
# rank before the job fails; torchrun also stops all workers when one of them exits with an error.
# Arguments after the script name replace the defaults below (e.g. --out, --epochs, --resume).
#
#SBATCH --job-name=simclr-xb
#SBATCH --nodes=4
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=64
#SBATCH --time=48:00:00
#SBATCH --output=%x-%j.out
set -euo pipefail

NODES=${NODES:-${SLURM_JOB_NUM_NODES:-1}}
GPUS=${GPUS:-${SLURM_GPUS_ON_NODE:-8}}
PYTHON=${PYTHON:-python}
HEAD_NODE=$(scontrol show hostnames "${SLURM_JOB_NODELIST}" | head -n 1)
RDZV_PORT=${RDZV_PORT:-29500}
export SIMCLR_XB_DIST_TIMEOUT=${SIMCLR_XB_DIST_TIMEOUT:-900}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-8}
# export NCCL_SOCKET_IFNAME=ib0   # pick the fabric interface if NCCL does not find it

if [ "$#" -eq 0 ]; then
  # CIFAR-10, ResNet-50 (CIFAR stem), global batch 1024 = 32 GPUs x 32 (paper appendix B.9)
  set -- --preset cifar --data cifar10 --batch-size 1024 --epochs 1000 --precision bfloat16 \
         --out "runs/cifar-${SLURM_JOB_ID}"
fi

srun --ntasks-per-node=1 --kill-on-bad-exit=1 \
  "${PYTHON}" -m torch.distributed.run \
    --nnodes "${NODES}" --nproc-per-node "${GPUS}" \
    --rdzv-backend c10d --rdzv-endpoint "${HEAD_NODE}:${RDZV_PORT}" --rdzv-id "${SLURM_JOB_ID}" \
    --max-restarts 0 \
    -m simclr_xb.cli train --backend torch "$@"
