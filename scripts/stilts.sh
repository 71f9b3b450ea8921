#!/usr/bin/env bash
# STILTs in two stages, the seed README's example 4 (e.g. MNLI -> RTE):
#   scripts/stilts.sh INTERMEDIATE TARGET [glue/train.py flags for both stages]
# Stage A trains INTERMEDIATE from the pretrained model and saves $OUTPUT_DIR/INTERMEDIATE/all_state.p;
# it is skipped when that checkpoint exists, so one stage A serves several targets.
# Stage B trains TARGET from stage A's encoder (a new head) into $OUTPUT_DIR/INTERMEDIATE__TARGET.
# Environment and defaults: scripts/lib.sh. For restarts and a comparison without STILTs, see stilts-run.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
need_args 2 "scripts/stilts.sh INTERMEDIATE TARGET [glue/train.py flags]" "$@"
intermediate="$1" target="$2"
shift 2
stage_a="$OUTPUT_DIR/$intermediate"
stage_b="$OUTPUT_DIR/${intermediate}__${target}"

if [[ -f "$stage_a/all_state.p" ]]; then
    echo "stilts.sh: reusing $stage_a/all_state.p (delete it to retrain $intermediate)" >&2
else
    train_py --task_name "$intermediate" --do_train --do_val --do_save \
        --bert_model "$BERT_MODEL" --bert_load_mode from_pretrained --bert_save_mode model_all "${RECOMMENDED[@]}" \
        --output_dir "$stage_a" "$@"
fi
train_py --task_name "$target" --do_train --do_val --do_test --do_val_history --do_save \
    --bert_model "$BERT_MODEL" --bert_load_path "$stage_a/all_state.p" --bert_load_mode state_model_only \
    --bert_save_mode model_all "${RECOMMENDED[@]}" --output_dir "$stage_b" "$@"
