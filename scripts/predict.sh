#!/usr/bin/env bash
# Dev metrics and test predictions of a fine-tuned model, no training (the seed README's example 1):
#   scripts/predict.sh TASK CHECKPOINT [glue/train.py flags]
# CHECKPOINT is a whole-model state dict such as the seed's released mnli__rte.p (--bert_load_mode
# full_model_only, the default here); for an all_state.p written by glue/train.py, add
# --bert_load_mode state_full_model. Output: $OUTPUT_DIR/TASK_predict (val_metrics.json, val_preds.csv,
# test_preds.csv). Environment and defaults: scripts/lib.sh.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
need_args 2 "scripts/predict.sh TASK CHECKPOINT [glue/train.py flags]" "$@"
task="$1" checkpoint="$2"
shift 2
train_py --task_name "$task" --do_val --do_test --do_lower_case --bert_model "$BERT_MODEL" \
    --bert_load_mode full_model_only --bert_load_path "$checkpoint" --eval_batch_size 64 \
    --output_dir "$OUTPUT_DIR/${task}_predict" "$@"
