#!/usr/bin/env bash
# The GPU figures of BENCHMARKS.md in one command, on any CUDA machine (H100 / H200 / A100 ...):
#   bash benchmarks/gpu.sh            (PYTHON=/path/to/python bash benchmarks/gpu.sh to pick the interpreter)
# 1. ViT-B/16 bf16 training: step time, samples/s, FLOP/s and MFU against the device's bf16 peak;
#    CLIP ViT-B/32 samples/s against open_clip on the same GPU (eager, then torch.compile).
# 2. the attention kernels the training step runs, from torch.profiler (flash / cuDNN expected).
# 3. fused vs reference attention memory at 1k-8k tokens.
# 4. runs killed after their first end-of-epoch checkpoint and resumed (one GPU; DDP and FSDP on every
#    GPU when there are two or more), and the time for a failed rank to end the job under NCCL.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv || true
echo "## eager, bf16"
$PY benchmarks/compare.py --device cuda --dtype bf16 --batch-scale 16 --rounds 10 --warmup 3
echo "## torch.compile, bf16"
$PY benchmarks/compare.py --device cuda --dtype bf16 --batch-scale 16 --rounds 10 --warmup 3 --compile --no-memory
echo "## attention kernels in a ViT-B/16 bf16 training step"
$PY benchmarks/kernels.py --device cuda
echo "## fused vs reference attention"
$PY benchmarks/attention.py --device cuda --dtype bf16 --heads 16 --batch 4
echo "## exact resume after a SIGKILL: one GPU"
$PY benchmarks/resume_exact.py trainer=gpu trainer.precision=32-true trainer.deterministic=true
NGPU=$(nvidia-smi -L 2>/dev/null | wc -l)
if [ "$NGPU" -ge 2 ]; then
  echo "## exact resume after a SIGKILL: DDP and FSDP on $NGPU GPUs"
  $PY benchmarks/resume_exact.py trainer=ddp trainer.accelerator=gpu trainer.devices=$NGPU trainer.precision=32-true trainer.deterministic=true
  $PY benchmarks/resume_exact.py trainer=fsdp trainer.devices=$NGPU trainer.precision=32-true trainer.deterministic=true \
      trainer.strategy.state_dict_type=full
  echo "## a failed rank ends the job (NCCL)"
  $PY benchmarks/dead_rank.py --timeout 60 --grace 30 --repeats 1 trainer.accelerator=gpu
fi
