"""Examples -> model inputs: WordPiece ids with the seed's [CLS] a [SEP] b [SEP] layout.

Texts are tokenized in batches by the Rust WordPiece tokenizer, then truncated exactly as the
seed's `truncate_seq_pair` does (pop the last token of the longer sequence, of the second one on
ties). Features are kept unpadded; `collate` pads each batch to its own longest row.

Featurized splits are cached on disk, keyed by everything that changes the ids: the data file's
content, the task and split, the vocabulary, casing and max length. A second stage or a restart
then skips tokenization (MNLI train takes minutes to tokenize).
"""
import dataclasses
import hashlib
import json
import logging
import os

import numpy as np
import torch
from transformers import BertTokenizer

from stilts.errors import StiltsError
from stilts.io import atomic_write
from stilts.tasks import read_examples

logger = logging.getLogger(__name__)

FEATURES_VERSION = 1  # bump when the featurization changes, to invalidate old caches


def load_tokenizer(vocab_path, do_lower_case):
    """The fast (Rust) WordPiece tokenizer over a BERT vocab.txt."""
    if not os.path.isfile(vocab_path):
        raise StiltsError(f"{vocab_path}: vocabulary file not found (pass --bert_vocab_path)")
    return BertTokenizer(vocab=vocab_path, do_lower_case=do_lower_case)


def truncate_pair_lengths(len_a, len_b, budget):
    """Lengths left by the seed's truncate_seq_pair: trim the longer side, the second on ties."""
    while len_a + len_b > budget:
        if len_a > len_b:
            len_a -= 1
        else:
            len_b -= 1
    return len_a, len_b


@dataclasses.dataclass
class Features:
    """Unpadded inputs of one split, in file order."""
    input_ids: list            # one int64 array per example: [CLS] a [SEP] (b [SEP])
    segment_a_lengths: np.ndarray  # tokens of segment 0 ([CLS] a [SEP]); the rest are segment 1
    labels: np.ndarray         # label ids (int64), scores (float32), or zeros for unlabeled splits

    def __len__(self):
        return len(self.input_ids)

    @property
    def lengths(self):
        return np.fromiter((len(x) for x in self.input_ids), dtype=np.int64, count=len(self.input_ids))

    def subset(self, indices):
        return Features([self.input_ids[i] for i in indices], self.segment_a_lengths[indices], self.labels[indices])


def featurize(examples, task, tokenizer, max_seq_length):
    """Token ids of every example, truncated to max_seq_length as the seed does."""
    cls_id, sep_id = tokenizer.cls_token_id, tokenizer.sep_token_id
    ids_a = tokenizer([e.text_a for e in examples], add_special_tokens=False)["input_ids"]
    has_b = examples[0].text_b is not None
    ids_b = tokenizer([e.text_b for e in examples], add_special_tokens=False)["input_ids"] if has_b else None
    input_ids, seg_a = [], np.zeros(len(examples), dtype=np.int64)
    for i in range(len(examples)):
        a = ids_a[i]
        if has_b:
            b = ids_b[i]
            len_a, len_b = truncate_pair_lengths(len(a), len(b), max_seq_length - 3)
            row = [cls_id, *a[:len_a], sep_id, *b[:len_b], sep_id]
        else:
            len_a = min(len(a), max_seq_length - 2)
            row = [cls_id, *a[:len_a], sep_id]
        input_ids.append(np.asarray(row, dtype=np.int64))
        seg_a[i] = len_a + 2
    return Features(input_ids, seg_a, task.label_ids(examples))


def collate(features, indices, pad_to=None):
    """Tensors for a batch, padded to its longest row (or to `pad_to`, the seed's fixed padding)."""
    rows = [features.input_ids[i] for i in indices]
    width = pad_to or max(len(r) for r in rows)
    input_ids = np.zeros((len(rows), width), dtype=np.int64)
    attention_mask = np.zeros((len(rows), width), dtype=np.int64)
    for j, row in enumerate(rows):
        input_ids[j, :len(row)] = row
        attention_mask[j, :len(row)] = 1
    positions = np.arange(width)[None, :]
    seg_a = features.segment_a_lengths[indices][:, None]
    token_type_ids = ((positions >= seg_a) & (attention_mask == 1)).astype(np.int64)
    return {
        "input_ids": torch.from_numpy(input_ids),
        "attention_mask": torch.from_numpy(attention_mask),
        "token_type_ids": torch.from_numpy(token_type_ids),
        "labels": torch.from_numpy(features.labels[indices]),
    }


def _file_digest(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _vocab_digest(tokenizer):
    vocab = sorted(tokenizer.get_vocab().items(), key=lambda kv: kv[1])
    return hashlib.sha256(json.dumps(vocab).encode()).hexdigest()


def cache_key(task, split, path, tokenizer, max_seq_length):
    key = {
        "version": FEATURES_VERSION,
        "task": task.name,
        "split": split,
        "layout": dataclasses.asdict(task.layouts[split]),
        "data": _file_digest(path),
        "vocab": _vocab_digest(tokenizer),
        "lowercase": bool(getattr(tokenizer, "do_lower_case", False)),
        "max_seq_length": max_seq_length,
    }
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:32]


def load_features(task, split, data_dir, tokenizer, max_seq_length, cache_dir=None):
    """Features of one split, from the on-disk cache when its key matches (cache_dir=None: no cache)."""
    path = task.path(split, data_dir)
    if not os.path.isfile(path):
        raise StiltsError(f"{path}: file not found")
    cache_path = None
    if cache_dir:
        key = cache_key(task, split, path, tokenizer, max_seq_length)
        cache_path = os.path.join(cache_dir, "features", f"{task.name}-{split}-{key}.pt")
        if os.path.isfile(cache_path):
            try:
                return _from_arrays(torch.load(cache_path, weights_only=True))
            except Exception as e:  # a damaged cache entry is rebuilt, never fatal
                logger.warning("ignoring unreadable features cache %s (%s)", cache_path, e)
    features = featurize(read_examples(task, split, data_dir), task, tokenizer, max_seq_length)
    if cache_path:
        os.makedirs(os.path.dirname(cache_path), exist_ok=True)
        with atomic_write(cache_path, "wb") as f:
            torch.save(_to_arrays(features), f)
    return features


def _to_arrays(features):
    lengths = features.lengths
    return {
        "ids": torch.from_numpy(np.concatenate(features.input_ids) if len(features) else np.zeros(0, np.int64)),
        "lengths": torch.from_numpy(lengths),
        "segment_a_lengths": torch.from_numpy(features.segment_a_lengths),
        "labels": torch.from_numpy(features.labels),
    }


def _from_arrays(arrays):
    lengths = arrays["lengths"].numpy()
    ids = np.split(arrays["ids"].numpy(), np.cumsum(lengths)[:-1])
    return Features(ids, arrays["segment_a_lengths"].numpy(), arrays["labels"].numpy())
