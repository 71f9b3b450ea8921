#!/usr/bin/env bash
# Fine-tune BERT on MRPC from the pretrained model (the seed README's example 2 and settings) into
# $OUTPUT_DIR/mrpc. Environment and defaults: scripts/lib.sh. Extra flags go to glue/train.py, e.g.
#   GLUE_DIR=glue_data scripts/run_mrpc.sh --learning_rate 3e-5
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
finetune mrpc "$@"
