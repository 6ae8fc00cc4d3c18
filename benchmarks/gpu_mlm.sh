#!/usr/bin/env bash
# bert-base MLM throughput and MFU on one GPU (bf16), plus an FSDP smoke run. Writes logs under $OUT.
# Usage on a GPU machine with fmkit installed: OUT=results bash benchmarks/gpu_mlm.sh
set -uo pipefail
OUT=${OUT:-benchmark-results}; mkdir -p "$OUT"
export FMKIT_CACHE=${FMKIT_CACHE:-/tmp/fmkit-cache} PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=true
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
common=(--config recipes/configs/mlm/bert-base.yaml --gradient_accumulation_steps 1 --max_steps 120 --warmup_steps 20
        --log_every 20 --eval_every 0 --save_every 0 --report_to none --num_workers 4 --overwrite_output_dir true)
run() { name=$1; shift; python recipes/mlm.py "${common[@]}" --output_dir "/tmp/runs/$name" "$@" > "$OUT/$name.log" 2>&1;
        echo "$name rc=$?"; tail -n 2 "/tmp/runs/$name/metrics.jsonl" | head -n 1 | tee -a "$OUT/summary.jsonl"; }
run seq128 --block_size 128 --per_device_batch_size 256
run seq512 --block_size 512 --per_device_batch_size 64
run seq128_compile --block_size 128 --per_device_batch_size 256 --torch_compile true
run seq512_compile --block_size 512 --per_device_batch_size 64 --torch_compile true
accelerate launch --config_file recipes/accelerate_configs/fsdp.yaml --num_processes 1 recipes/mlm.py \
    --max_steps 30 --eval_every 15 --save_every 15 --output_dir /tmp/runs/fsdp --report_to none \
    --overwrite_output_dir true > "$OUT/fsdp.log" 2>&1
echo "fsdp rc=$?"; grep eval_loss /tmp/runs/fsdp/metrics.jsonl | tee "$OUT/fsdp_eval.jsonl"
python -c "from transformers import AutoModelForMaskedLM as M; m = M.from_pretrained('/tmp/runs/fsdp'); print('fsdp export loads', m.num_parameters())"
