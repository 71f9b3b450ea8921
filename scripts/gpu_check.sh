#!/usr/bin/env bash
# One-GPU check of the CUDA path of glue/train.py (about a minute): train + dev on the RTE test
# fixtures with --bf16, with --fp16 (GradScaler on CUDA), an fp16 run resumed from its
# --train_save_every checkpoint (CUDA RNG state restored), and a NaN stop (exit 2). Uses the
# packaged MiniLM when .cache/models/all-MiniLM-L6-v2 exists, else a small random BERT, so the
# metrics only show that the path runs, not that it learns. Two-process NCCL needs two GPUs: not here.
#   bash scripts/gpu_check.sh            (PYTHON=... to pick the interpreter)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
if [[ -z "${PYTHON:-}" ]]; then
    if [[ -x .venv/bin/python ]]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
export HF_HUB_OFFLINE=1 STILTS_CACHE_DIR="$WORK/cache" TOKENIZERS_PARALLELISM=false

"$PYTHON" - <<'EOF'
import torch, transformers
assert torch.cuda.is_available(), "no CUDA device: this check is for a GPU machine"
print(f"torch {torch.__version__} (CUDA {torch.version.cuda}), transformers {transformers.__version__}, "
      f"{torch.cuda.get_device_name(0)}, bf16 supported: {torch.cuda.is_bf16_supported()}")
EOF

MODEL=.cache/models/all-MiniLM-L6-v2
if [[ ! -f "$MODEL/model.safetensors" ]]; then
    MODEL="$WORK/small-bert"
    "$PYTHON" - "$MODEL" <<'EOF'
import shutil, sys, torch
from transformers import BertConfig, BertModel
torch.manual_seed(0)
config = BertConfig(hidden_size=128, num_hidden_layers=2, num_attention_heads=4, intermediate_size=512)
BertModel(config).save_pretrained(sys.argv[1])
shutil.copy("cache/bert_metadata/uncased_L-12_H-768_A-12/vocab.txt", sys.argv[1])
EOF
fi
echo "model: $MODEL"

COMMON=(--task_name rte --data_dir tests/fixtures/glue/RTE --bert_model "$MODEL" --do_lower_case --not-verbose
        --seed 1 --max_seq_length 128 --train_batch_size 8 --num_train_epochs 2 --learning_rate 5e-5)

run() {  # name, extra flags...
    local name=$1; shift
    echo "== $name: glue/train.py $*"
    local start=$SECONDS
    "$PYTHON" glue/train.py "${COMMON[@]}" --output_dir "$WORK/$name" "$@"
    echo "   ($((SECONDS - start)) s)"
}

run bf16 --do_train --do_val --bf16
run fp16 --do_train --do_val --do_save --fp16 --train_save_every 7
run fp16-resumed --do_train --do_val --do_save --fp16 \
    --bert_load_mode state_all --bert_load_path "$WORK/fp16/all_state___epoch0001___batch000001.p"

echo "== nan: glue/train.py --learning_rate 1e30 (must stop with exit 2)"
set +e
"$PYTHON" glue/train.py "${COMMON[@]}" --output_dir "$WORK/nan" --do_train --learning_rate 1e30 2>"$WORK/nan.err"
status=$?
set -e
cat "$WORK/nan.err"
[[ $status -eq 2 ]] || { echo "FAIL: expected exit 2, got $status"; exit 1; }

"$PYTHON" - "$WORK" <<'EOF'
import json, os, sys, torch
work = sys.argv[1]
for name in ("bf16", "fp16", "fp16-resumed"):
    with open(os.path.join(work, name, "val_metrics.json")) as f:
        report = json.load(f)
    print(f"{name:13s} dev loss {report['loss']:.4f}  metrics {report['metrics']}")
full, resumed = (torch.load(os.path.join(work, d, "all_state.p"), weights_only=True) for d in ("fp16", "fp16-resumed"))
diff = max((full["model"][k] - resumed["model"][k]).abs().max().item() for k in full["model"])
print(f"fp16 loss scale at the end: {full['scaler']['scale']:g}")
print(f"fp16 resumed vs uninterrupted: max weight difference {diff:.3g} "
      "(0 unless a CUDA kernel is nondeterministic, e.g. the embedding backward's atomic adds)")
kept = torch.load(os.path.join(work, "nan", "all_state___last_good.p"), weights_only=True)
finite = all(torch.isfinite(v).all() for v in kept["model"].values())
print(f"NaN stop kept all_state___last_good.p at step {kept['train_state']['global_step']}, all weights finite: {finite}")
assert finite and diff < 1e-2
print("GPU CHECK OK")
EOF
