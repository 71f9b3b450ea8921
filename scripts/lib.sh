# Shared by the scripts in this folder (sourced, not run): find Python and the repository, read the
# environment, and run glue/train.py with the seed README's recommended settings.
#
#   GLUE_DIR      folder holding the GLUE task folders (RTE/, MNLI/, ...); required
#   BERT_MODEL    bert-large-uncased (default; config and vocab from $BERT_ALL_DIR) or a local model folder
#   BERT_ALL_DIR  default: <repo>/cache/bert_metadata
#   OUTPUT_DIR    parent folder of the run folders (default: runs)
#   PYTHON        default: <repo>/.venv/bin/python if it exists, else python3
#
# Flags given to a script go to glue/train.py after these defaults, so they override them.
set -euo pipefail

STILTS_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [[ -z "${PYTHON:-}" ]]; then
    if [[ -x "$STILTS_ROOT/.venv/bin/python" ]]; then PYTHON="$STILTS_ROOT/.venv/bin/python"; else PYTHON=python3; fi
fi
BERT_MODEL="${BERT_MODEL:-bert-large-uncased}"
export BERT_ALL_DIR="${BERT_ALL_DIR:-$STILTS_ROOT/cache/bert_metadata}"
OUTPUT_DIR="${OUTPUT_DIR:-runs}"
: "${GLUE_DIR:?set GLUE_DIR to the folder holding the GLUE task folders (RTE/, MNLI/, ...)}"
export GLUE_DIR

# The seed README's settings: batch 24, learning rate 2e-5, 3 epochs, uncased input.
RECOMMENDED=(--do_lower_case --train_batch_size 24 --learning_rate 2e-5 --num_train_epochs 3)

# need_args N USAGE "$@": stop with USAGE (exit 2) unless at least N arguments were given.
need_args() {
    local n="$1" usage="$2"
    shift 2
    if (( $# < n )); then
        echo "usage: $usage" >&2
        exit 2
    fi
}

train_py() {
    "$PYTHON" "$STILTS_ROOT/glue/train.py" "$@"
}

# finetune TASK [flags]: the README's example 2, TASK from vanilla BERT, into $OUTPUT_DIR/TASK.
finetune() {
    local task="$1"
    shift
    train_py --task_name "$task" --do_train --do_val --do_test --do_val_history --do_save \
        --bert_model "$BERT_MODEL" --bert_load_mode from_pretrained --bert_save_mode model_all "${RECOMMENDED[@]}" \
        --output_dir "$OUTPUT_DIR/$task" "$@"
}
