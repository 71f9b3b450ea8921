"""Examples -> model inputs: for BERT, WordPiece ids with the seed's [CLS] a [SEP] b [SEP] layout;
for other encoders, what their own tokenizer makes of the pair.

A multiple-choice example becomes one row per choice, [CLS] context [SEP] choice [SEP], and its
batches are (examples, choices, tokens).

BERT: texts are tokenized in batches by the Rust WordPiece tokenizer, then truncated exactly as the
seed's `truncate_seq_pair` does (pop the last token of the longer sequence, of the second one on
ties). Other encoders (ModelTokenizer): the model's fast tokenizer adds its special tokens
(RoBERTa: <s> a </s></s> b </s>) and truncates the longer text ('longest_first'). Features are kept
unpadded; DeviceFeatures pads a split once on the device the model runs on, and cuts each batch to
its own longest row (or a length bucket).

Featurized splits are cached on disk, keyed by everything that changes the ids: the data file's
content, the task and split, the tokenizer (BERT: vocabulary and casing; others: the tokenizer's
whole definition and the model type) and max length. A second stage or a restart then skips
tokenization (MNLI train takes minutes to tokenize).
"""
import dataclasses
import functools
import hashlib
import json
import logging
import os
from typing import Optional

import numpy as np
import torch
from torch import nn
from transformers import BertTokenizer

from stilts.errors import StiltsError
from stilts.io import atomic_write

logger = logging.getLogger(__name__)

FEATURES_VERSION = 2  # bump when the featurization changes, to invalidate old caches
# The tokens of an input whose texts are a word piece each: the seed's layout (one text, a pair).
SEED_LAYOUT = {False: ("[CLS]", "a", "[SEP]"), True: ("[CLS]", "a", "[SEP]", "b", "[SEP]")}


def load_tokenizer(vocab_path, do_lower_case):
    """The fast (Rust) WordPiece tokenizer over a BERT vocab.txt."""
    if not os.path.isfile(vocab_path):
        raise StiltsError(f"{vocab_path}: vocabulary file not found (pass --bert_vocab_path)")
    return BertTokenizer(vocab=vocab_path, do_lower_case=do_lower_case)


class ModelTokenizer:
    """An encoder's own fast tokenizer (every encoder but BERT): its special tokens, its pair layout,
    its truncation of the longer text, its normalisation (--do_lower_case is BERT's)."""

    def __init__(self, tokenizer, model_type):
        if not getattr(tokenizer, "is_fast", False):
            raise StiltsError(f"{tokenizer.name_or_path}: a {type(tokenizer).__name__}, not a fast tokenizer "
                              f"(stilts needs the model's tokenizer.json)")
        if len(tokenizer) <= len(set(tokenizer.all_special_ids)):  # transformers' answer to a folder without one
            raise StiltsError(f"{tokenizer.name_or_path}: no tokenizer files (tokenizer.json, ...): the tokenizer "
                              f"would know only its special tokens")
        self.tokenizer = tokenizer
        self.model_type = model_type

    def encode(self, texts_a, texts_b, max_seq_length):
        """Each row's ids, and how many of them are segment 0 (up to the second text's)."""
        encoded = self.tokenizer(texts_a, texts_b, truncation="longest_first", max_length=max_seq_length,
                                 return_token_type_ids=True, return_attention_mask=False)
        input_ids = [np.asarray(ids, dtype=np.int64) for ids in encoded["input_ids"]]
        seg_a = np.asarray([types.count(0) for types in encoded["token_type_ids"]], dtype=np.int64)
        return input_ids, seg_a

    def layout(self, pair):
        """The tokens of an input whose texts are one token each, special tokens by name."""
        encoded = self.tokenizer("a", "b" if pair else None)
        tokens = self.tokenizer.convert_ids_to_tokens(encoded["input_ids"])
        layout = []
        for token, sequence in zip(tokens, encoded.sequence_ids()):
            name = token if sequence is None else "ab"[sequence]
            if sequence is None or layout[-1:] != [name]:  # a text that became several tokens counts as one
                layout.append(name)
        return tuple(layout)

    def identity(self):
        """What decides the ids, for the features cache key."""
        definition = self.tokenizer.backend_tokenizer.to_str()
        return {"tokenizer": hashlib.sha256(definition.encode()).hexdigest(), "model_type": self.model_type}


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
    """Unpadded inputs of one split, in file order; `choices` rows per example (multiple choice),
    example i's rows being i * choices ... (i + 1) * choices - 1."""
    input_ids: list            # one int64 array per row: [CLS] a [SEP] (b [SEP])
    segment_a_lengths: np.ndarray  # per row, tokens of segment 0 ([CLS] a [SEP]); the rest are segment 1
    labels: np.ndarray         # per example: label ids (int64), scores (float32), or zeros for unlabeled splits
    choices: int = 1
    unknown_share: Optional[float] = None  # of the word pieces (special tokens aside), the [UNK] ones

    def __len__(self):
        return len(self.labels)

    @property
    def lengths(self):
        """Tokens per example (multiple choice: of its longest row, the width it pads to)."""
        rows = np.fromiter((len(x) for x in self.input_ids), dtype=np.int64, count=len(self.input_ids))
        return rows.reshape(len(self), self.choices).max(axis=1)

    def rows(self, indices):
        """The row numbers of these examples, example by example."""
        indices = np.asarray(indices, dtype=np.int64)
        return (indices[:, None] * self.choices + np.arange(self.choices)[None, :]).reshape(-1)

    def subset(self, indices):
        rows = self.rows(indices)
        return Features([self.input_ids[r] for r in rows], self.segment_a_lengths[rows], self.labels[indices],
                        self.choices, self.unknown_share)


def featurize(examples, task, tokenizer, max_seq_length):
    """Token ids of every example, truncated to max_seq_length (BERT: as the seed does)."""
    if task.is_multiple_choice:  # one (context, choice) pair per choice
        choices = len(examples[0].choices)
        texts_a = [e.text_a for e in examples for _ in range(choices)]
        texts_b = [choice for e in examples for choice in e.choices]
    else:
        choices, texts_a = 1, [e.text_a for e in examples]
        texts_b = [e.text_b for e in examples] if examples[0].text_b is not None else None
    encode = tokenizer.encode if isinstance(tokenizer, ModelTokenizer) else functools.partial(seed_encode, tokenizer)
    input_ids, seg_a = encode(texts_a, texts_b, max_seq_length)
    return Features(input_ids, seg_a, task.label_ids(examples), choices, unknown_share(input_ids, tokenizer))


def unknown_share(input_ids, tokenizer):
    """The share of [UNK] among the word pieces: a vocabulary that does not fit the texts' casing (a
    cased text for an uncased BERT) turns every capitalised word into [UNK] (a fifth of RTE's)."""
    hf = tokenizer.tokenizer if isinstance(tokenizer, ModelTokenizer) else tokenizer
    if hf.unk_token_id is None or not input_ids:
        return None
    ids = np.concatenate(input_ids)
    pieces = int((~np.isin(ids, [i for i in hf.all_special_ids if i != hf.unk_token_id])).sum())
    return float((ids == hf.unk_token_id).sum() / pieces) if pieces else None


def seed_encode(tokenizer, texts_a, texts_b, max_seq_length):
    """BERT: [CLS] a [SEP] (b [SEP]) of each row, truncated by the seed's rule, and its segment-0 length."""
    cls_id, sep_id = tokenizer.cls_token_id, tokenizer.sep_token_id
    ids_a = tokenizer(texts_a, add_special_tokens=False)["input_ids"]
    ids_b = tokenizer(texts_b, add_special_tokens=False)["input_ids"] if texts_b is not None else None
    input_ids, seg_a = [], np.zeros(len(texts_a), dtype=np.int64)
    for i in range(len(texts_a)):
        a = ids_a[i]
        if ids_b is not None:
            b = ids_b[i]
            len_a, len_b = truncate_pair_lengths(len(a), len(b), max_seq_length - 3)
            row = [cls_id, *a[:len_a], sep_id, *b[:len_b], sep_id]
        else:
            len_a = min(len(a), max_seq_length - 2)
            row = [cls_id, *a[:len_a], sep_id]
        input_ids.append(np.asarray(row, dtype=np.int64))
        seg_a[i] = len_a + 2
    return input_ids, seg_a


def collate(features, indices, pad_to=None):
    """Tensors for a batch, padded to its longest row (or to `pad_to`, the seed's fixed padding);
    multiple choice: (examples, choices, width)."""
    indices = np.asarray(indices, dtype=np.int64)
    on_cpu = DeviceFeatures(features.subset(indices), torch.device("cpu"), pad_to=pad_to)
    return on_cpu.batch(np.arange(len(indices)), torch.arange(len(indices)))


def padded_width(longest, multiple_of, cap):
    """The width a batch is padded to: its longest row rounded up to a multiple (a length bucket),
    never past `cap` (max_seq_length: the rows are no longer, the position embeddings may be no more)."""
    return min(-(-int(longest) // multiple_of) * multiple_of, max(cap, int(longest)))


class DeviceFeatures:
    """A split's inputs padded once and kept on the device the model runs on: a batch is cut out
    there, with no collating on the host and no copy per step.

    A batch's width is decided on the host from the lengths (no wait for the device): its longest row,
    rounded up to `multiple_of` (length buckets, a bounded set of shapes for compiled code and CUDA
    graphs), or `pad_to` for the seed's fixed padding. Example indices reach the device through
    `upload`, once per epoch, from pinned memory on a GPU: a copy from pageable memory would make
    the host wait for the device.
    """

    def __init__(self, features, device, pad_to=None, multiple_of=1, cap=None):
        self.device = device
        self.lengths = features.lengths  # per example, on the host
        self.choices = features.choices
        self.pad_to, self.multiple_of = pad_to, multiple_of
        self.cap = cap or pad_to or int(self.lengths.max(initial=1))
        row_lengths = np.fromiter(map(len, features.input_ids), dtype=np.int64, count=len(features.input_ids))
        ids = np.zeros((len(row_lengths), int(row_lengths.max(initial=1))), dtype=np.int32)
        ids[np.arange(ids.shape[1])[None, :] < row_lengths[:, None]] = np.concatenate(
            [*features.input_ids, np.zeros(0, np.int64)])
        self.ids = torch.from_numpy(ids).to(device)  # int32: half the memory; int64 per batch
        self.row_lengths = torch.from_numpy(row_lengths).to(device)
        self.segment_a_lengths = torch.from_numpy(features.segment_a_lengths).to(device)
        self.labels = torch.from_numpy(features.labels).to(device)

    def upload(self, indices):
        """Example indices (host) as a tensor on the device: slices of it pick batches."""
        indices = torch.from_numpy(np.ascontiguousarray(indices, dtype=np.int64))
        if self.device.type == "cuda":
            indices = indices.pin_memory()
        return indices.to(self.device, non_blocking=True)

    def width(self, indices):
        """The padded width of the batch of these examples (host indices)."""
        return self.pad_to or padded_width(self.lengths[indices].max(), self.multiple_of, self.cap)

    def batch(self, indices, on_device):
        """The tensors of the batch of these examples: `indices` on the host, `on_device` the same
        indices on the device (a slice of what `upload` returned)."""
        width = self.width(indices)
        rows = on_device
        if self.choices > 1:
            rows = (on_device[:, None] * self.choices + torch.arange(self.choices, device=self.device)).reshape(-1)
        stored = min(width, self.ids.shape[1])
        input_ids = self.ids[:, :stored].index_select(0, rows).long()
        if width > stored:  # fixed padding past the split's longest row
            input_ids = nn.functional.pad(input_ids, (0, width - stored))
        positions = torch.arange(width, device=self.device)
        attention_mask = positions < self.row_lengths[rows, None]
        token_type_ids = (positions >= self.segment_a_lengths[rows, None]) & attention_mask
        shape = (len(indices), self.choices, width) if self.choices > 1 else (len(rows), width)
        return {
            "input_ids": input_ids.reshape(shape),
            "attention_mask": attention_mask.long().reshape(shape),
            "token_type_ids": token_type_ids.long().reshape(shape),
            "labels": self.labels[on_device],
        }


def _tokenizer_identity(tokenizer):
    if isinstance(tokenizer, ModelTokenizer):
        return tokenizer.identity()
    vocab = sorted(tokenizer.get_vocab().items(), key=lambda kv: kv[1])
    return {"vocab": hashlib.sha256(json.dumps(vocab).encode()).hexdigest(),
            "lowercase": bool(getattr(tokenizer, "do_lower_case", False))}


def cache_key(task, split, folder, tokenizer, max_seq_length):
    key = {
        "version": FEATURES_VERSION,
        "task": task.name,
        "split": split,
        **task.source_digest(split, folder),
        **_tokenizer_identity(tokenizer),
        "max_seq_length": max_seq_length,
    }
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:32]


def load_features(task, split, data_dir, tokenizer, max_seq_length, cache_dir=None):
    """Features of one split, from the on-disk cache when its key matches (cache_dir=None: no cache)."""
    task.check_split(split, data_dir)
    cache_path = None
    if cache_dir:
        key = cache_key(task, split, data_dir, tokenizer, max_seq_length)
        cache_path = os.path.join(cache_dir, "features", f"{task.name}-{split}-{key}.pt")
        if os.path.isfile(cache_path):
            try:
                features = _from_arrays(torch.load(cache_path, weights_only=True))
            except Exception as e:  # a damaged cache entry is rebuilt, never fatal
                logger.warning("ignoring unreadable features cache %s (%s)", cache_path, e)
            else:
                warn_if_unknown(features, task, split)
                return features
    features = featurize(task.read(split, data_dir), task, tokenizer, max_seq_length)
    warn_if_unknown(features, task, split)
    if cache_path:
        os.makedirs(os.path.dirname(cache_path), exist_ok=True)
        with atomic_write(cache_path, "wb") as f:
            torch.save(_to_arrays(features), f)
    return features


UNKNOWN_WARNING = 0.01  # well-cased GLUE text with a fitting vocabulary: under 0.01% of its word pieces


def warn_if_unknown(features, task, split):
    if features.unknown_share is not None and features.unknown_share > UNKNOWN_WARNING:
        logger.warning("%.1f%% of the word pieces of %s %s are [UNK]: the vocabulary does not fit these texts "
                       "(the casing? see --do_lower_case)", 100 * features.unknown_share, task.name, split)


def _to_arrays(features):
    lengths = np.fromiter((len(x) for x in features.input_ids), dtype=np.int64, count=len(features.input_ids))
    return {
        "ids": torch.from_numpy(np.concatenate(features.input_ids) if len(features) else np.zeros(0, np.int64)),
        "lengths": torch.from_numpy(lengths),
        "segment_a_lengths": torch.from_numpy(features.segment_a_lengths),
        "labels": torch.from_numpy(features.labels),
        "choices": torch.tensor(features.choices),
        **({} if features.unknown_share is None else {"unknown_share": torch.tensor(features.unknown_share)}),
    }


def _from_arrays(arrays):
    lengths = arrays["lengths"].numpy()
    ids = np.split(arrays["ids"].numpy(), np.cumsum(lengths)[:-1])
    share = float(arrays["unknown_share"]) if "unknown_share" in arrays else None  # caches made before it: None
    return Features(ids, arrays["segment_a_lengths"].numpy(), arrays["labels"].numpy(), int(arrays["choices"]),
                    share)
