"""One training loop: length-grouped batches, dynamic padding, mixed precision, DDP, resume.

Batches are *global*: each optimizer step sees `train_batch_size` examples whatever the number of
processes or accumulation steps. A global batch is cut into `gradient_accumulation_steps` micro
batches, and each micro batch into one slice per process. Every slice's summed loss is divided by
the global batch size (times the world size, which DDP's gradient averaging divides out), so the
update equals that of one process on the whole batch, up to float noise.

The order of batches in epoch e is a pure function of (seed, e), so a run resumed from a
checkpoint taken at (epoch, batch) replays exactly the batches an uninterrupted run would.
"""
import contextlib
import dataclasses
import logging
import math
import os
import time

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm
from transformers import get_linear_schedule_with_warmup

from stilts import distributed
from stilts.checkpoints import make_checkpoint
from stilts.cpu import warn_if_slow_bf16
from stilts.errors import StiltsError
from stilts.features import collate
from stilts.io import save_checkpoint
from stilts.metrics import compute_metrics, predictions_from_logits
from stilts.modeling import loss_fn, unwrap

logger = logging.getLogger(__name__)

NO_DECAY = ("bias", "LayerNorm.weight", "LayerNorm.bias", "adapter.down_project.weight", "adapter.up_project.weight")


@dataclasses.dataclass
class TrainConfig:
    train_batch_size: int = 32          # examples per optimizer step, over all processes
    gradient_accumulation_steps: int = 1
    eval_batch_size: int = 32
    learning_rate: float = 5e-5
    weight_decay: float = 0.01
    warmup_proportion: float = 0.1
    num_train_epochs: float = 3.0
    max_grad_norm: float = 1.0          # 0 disables clipping
    adam_epsilon: float = 1e-6          # BERT's value
    seed: int = 0
    group_by_length: bool = True        # length-grouped batches (False: plain random batches)
    pad_to_max_length: bool = False     # the seed's fixed padding to max_seq_length
    max_seq_length: int = 128
    precision: str = "fp32"             # fp32 | bf16 | fp16
    loss_scale: float = 0.0             # fp16: 0 = dynamic, > 0 = fixed starting scale
    torch_compile: bool = False
    save_every: int = 0                 # checkpoint every N optimizer steps (0: never)
    save_mode: str = "all"
    verbose: bool = True


def epoch_batches(lengths, batch_size, seed, epoch, group_by_length, bucket_batches=50):
    """The global batches (arrays of example indices) of one epoch.

    With grouping, a random permutation is cut into buckets of `bucket_batches` batches, each
    bucket is sorted by length and cut into batches, and the batch order is shuffled: batches
    hold similar lengths (little padding) while the epoch stays randomly ordered.
    """
    rng = np.random.default_rng([seed, epoch])
    order = rng.permutation(len(lengths))
    if group_by_length:
        bucket = batch_size * bucket_batches
        order = np.concatenate([
            chunk[np.argsort(-lengths[chunk], kind="stable")]
            for chunk in np.split(order, range(bucket, len(order), bucket))
        ])
    batches = np.split(order, range(batch_size, len(order), batch_size))
    if group_by_length:
        batches = [batches[i] for i in rng.permutation(len(batches))]
    return batches


def reuse_gradient_buffer(embedding):
    """Give an embedding matrix one gradient buffer for the whole run (CPU, one process).

    Its dense gradient (30522 x hidden floats for BERT's word pieces) is otherwise allocated afresh
    each step, and the C allocator maps it from the OS, which zero-fills it page by page: 10-45 ms
    of a ~600 ms bf16 MiniLM step on 2 cores. Here the lookup makes its sparse gradient (one row
    per word piece in the batch), and a hook adds it into the kept buffer, so the clipping and the
    optimizer see the same dense gradient as before. A second micro batch (gradient accumulation)
    finds the dense gradient already there and autograd adds into it directly.
    """
    if not embedding.weight.requires_grad or embedding.sparse:  # frozen (adapters), or done already
        return
    buffer = None  # made at the first backward: evaluation-only runs never need it

    def densify(weight):
        nonlocal buffer
        if not weight.grad.is_sparse:
            return
        if buffer is None:
            buffer = torch.zeros_like(weight)
        else:
            buffer.zero_()
        buffer.index_add_(0, weight.grad._indices()[0], weight.grad._values())
        weight.grad = buffer

    embedding.sparse = True
    embedding.weight.register_post_accumulate_grad_hook(densify)


class Trainer:
    def __init__(self, model, task, config, ctx, output_dir, run_args):
        self.task = task
        self.config = config
        self.ctx = ctx
        self.output_dir = output_dir
        self.run_args = run_args  # recorded in every checkpoint, as the seed does
        self.model = model.to(ctx.device)
        if ctx.device.type == "cpu" and not ctx.enabled and not config.torch_compile:
            reuse_gradient_buffer(unwrap(model).bert.embeddings.word_embeddings)
        self.autocast_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(config.precision)
        if ctx.is_main:  # one line per run, not one per process
            warn_if_slow_bf16(ctx.device, config.precision)
        self.scaler = torch.amp.GradScaler(
            ctx.device.type, enabled=config.precision == "fp16",
            init_scale=config.loss_scale or 2.0 ** 16,
            growth_interval=2 ** 31 - 1 if config.loss_scale else 2000)
        # `compiled` runs evaluation; `wrapped` (DDP around it) runs training. Evaluating through DDP
        # would broadcast buffers on every forward and hang when ranks score different batch counts.
        self.compiled = torch.compile(self.model, dynamic=True) if config.torch_compile else self.model
        self.wrapped = self.compiled
        if ctx.enabled:
            device_ids = [ctx.local_rank] if ctx.device.type == "cuda" else None
            self.wrapped = DistributedDataParallel(self.compiled, device_ids=device_ids)
        self.optimizer = None
        self.scheduler = None

    # ----------------------------------------------------------------------------- helpers
    def _autocast(self):
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.ctx.device.type, dtype=self.autocast_dtype)

    def _batch(self, features, indices):
        pad_to = self.config.max_seq_length if self.config.pad_to_max_length else None
        return {k: v.to(self.ctx.device, non_blocking=True) for k, v in collate(features, indices, pad_to).items()}

    def _forward(self, model, batch):
        with self._autocast():
            return model(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])

    def _make_optimizer(self, total_steps):
        params = [(n, p) for n, p in self.model.named_parameters() if p.requires_grad]
        groups = [
            {"params": [p for n, p in params if not any(nd in n for nd in NO_DECAY)],
             "weight_decay": self.config.weight_decay},
            {"params": [p for n, p in params if any(nd in n for nd in NO_DECAY)], "weight_decay": 0.0},
        ]
        # The fused kernel reads each parameter once per step (foreach makes ~10 passes): on CPU this is
        # a good share of a MiniLM step, since the 30k-row word embeddings are updated every step.
        fused = self.ctx.device.type in ("cpu", "cuda")
        self.optimizer = torch.optim.AdamW(groups, lr=self.config.learning_rate, eps=self.config.adam_epsilon,
                                           fused=fused, foreach=not fused)
        warmup = int(self.config.warmup_proportion * total_steps)
        self.scheduler = get_linear_schedule_with_warmup(self.optimizer, warmup, total_steps)

    def save(self, path, save_mode, train_state=None):
        """Write a checkpoint atomically (main process only)."""
        if self.ctx.is_main:
            checkpoint = make_checkpoint(self.model, save_mode, self.run_args, self.optimizer,
                                         self.scheduler, self.scaler, train_state)
            save_checkpoint(path, checkpoint)
        distributed.barrier(self.ctx)

    # ----------------------------------------------------------------------------- training
    def train(self, features, val_features=None, resume=None):
        """Train for num_train_epochs; returns the per-epoch dev results if val_features is given."""
        cfg = self.config
        lengths = features.lengths
        steps_per_epoch = math.ceil(len(features) / cfg.train_batch_size)
        total_steps = max(1, round(steps_per_epoch * cfg.num_train_epochs))
        self._make_optimizer(total_steps)
        position = {"epoch": 0, "batch": 0, "global_step": 0}
        history = {}
        if resume is not None:
            position, history = self._restore(resume, total_steps)
        if self.ctx.is_main and cfg.verbose:
            logger.info("training: %d examples, batch %d, %d steps (%d per epoch)",
                        len(features), cfg.train_batch_size, total_steps, steps_per_epoch)

        show = self.ctx.is_main and cfg.verbose
        started, self.train_examples = time.perf_counter(), 0
        epochs_bar = tqdm(total=math.ceil(total_steps / steps_per_epoch), desc="Epoch", disable=not show,
                          initial=position["epoch"])
        self.wrapped.train()
        while position["global_step"] < total_steps:
            epoch = position["epoch"]
            batches = epoch_batches(lengths, cfg.train_batch_size, cfg.seed, epoch, cfg.group_by_length)
            last_batch = min(len(batches), position["batch"] + total_steps - position["global_step"])
            steps_bar = tqdm(range(position["batch"], last_batch), desc="Training", leave=False, disable=not show)
            running = []
            for b in steps_bar:
                loss = self._train_step(features, batches[b], position)
                position["global_step"] += 1
                position["batch"] = b + 1
                running.append(loss)
                self.train_examples += len(batches[b])
                steps_bar.set_postfix(loss=f"{np.mean(running[-50:]):.4f}", lr=f"{self.scheduler.get_last_lr()[0]:.2e}")
                if cfg.save_every and (position["global_step"] % cfg.save_every == 0 or b == len(batches) - 1):
                    self._save_periodic(epoch, b, position, history)
            steps_bar.close()
            if val_features is not None:
                result = self.validate(val_features)
                history[str(epoch)] = {"loss": result["loss"], "metrics": result["metrics"]}
                self.wrapped.train()
            position = {"epoch": epoch + 1, "batch": 0, "global_step": position["global_step"]}
            epochs_bar.update(1)
        epochs_bar.close()
        self.train_seconds = time.perf_counter() - started
        return history

    def _train_step(self, features, global_indices, position):
        """One optimizer step over a global batch; returns its mean training loss."""
        cfg, ctx = self.config, self.ctx
        n_global = len(global_indices)
        micro_batches = np.array_split(global_indices, cfg.gradient_accumulation_steps)
        loss_sum = torch.zeros((), device=ctx.device)
        for m, micro in enumerate(micro_batches):
            mine = np.array_split(micro, ctx.world_size)[ctx.rank]
            weight = 1.0
            if len(mine) == 0:  # fewer examples than slices: run one with zero weight to keep DDP in step
                mine, weight = global_indices[:1], 0.0
            batch = self._batch(features, mine)
            sync_now = m == len(micro_batches) - 1
            no_sync = self.wrapped.no_sync() if ctx.enabled and not sync_now else contextlib.nullcontext()
            with no_sync:
                logits = self._forward(self.wrapped, batch)
                loss = loss_fn(logits, batch["labels"], unwrap(self.model).regression, reduction="sum") * weight
                self.scaler.scale(loss * (ctx.world_size / n_global)).backward()
            loss_sum += loss.detach()
        mean_loss = distributed.all_reduce_sum(ctx, loss_sum.item()) / n_global
        if not math.isfinite(mean_loss):  # the unscaled loss: no loss scale can fix a non-finite forward
            self._stop_on_non_finite("training loss", mean_loss, position)
        self.scaler.unscale_(self.optimizer)
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.max_grad_norm or math.inf)
        if not self.scaler.is_enabled() and not torch.isfinite(grad_norm):  # stop before the update spoils the weights
            self._stop_on_non_finite("gradient norm", grad_norm.item(), position)
        self.scaler.step(self.optimizer)  # with fp16, a step whose gradients overflowed is skipped
        self.scaler.update()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return mean_loss

    def _stop_on_non_finite(self, what, value, position):
        """The weights are still those of the last step whose loss and gradients were finite: keep them, then stop."""
        path = os.path.join(self.output_dir, "all_state___last_good.p")
        self.optimizer.zero_grad(set_to_none=True)
        self.save(path, "all", train_state=self._train_state(position, {}))
        raise StiltsError(f"{what} is {value} at step {position['global_step'] + 1} (epoch {position['epoch']}, "
                          f"batch {position['batch']}); stopped. The last good weights are in {path}. "
                          f"Try a lower --learning_rate, or fp32 instead of --fp16/--bf16")

    def _train_state(self, position, history):
        """Where training stands, with every process's RNG state: dropout continues exactly on resume."""
        rng = {"torch_rng": torch.get_rng_state()}
        if self.ctx.device.type == "cuda":
            rng["cuda_rng"] = torch.cuda.get_rng_state(self.ctx.device)
        return {"epoch": position["epoch"], "batch": position["batch"], "global_step": position["global_step"],
                "seed": self.config.seed, "val_history": history,
                "rng_per_rank": distributed.all_gather_objects(self.ctx, rng)}

    def _save_periodic(self, epoch, batch, position, history):
        name = f"all_state___epoch{epoch:04d}___batch{batch:06d}.p"
        self.save(os.path.join(self.output_dir, name), self.config.save_mode, self._train_state(position, history))

    def _restore(self, checkpoint, total_steps):
        """Optimizer, schedule, scaler, RNG and position of a `state_all` checkpoint."""
        missing = [k for k in ("optimizer", "scheduler", "train_state") if k not in checkpoint]
        if missing:
            raise StiltsError(f"--bert_load_mode state_all: the checkpoint has no {', '.join(missing)} "
                              f"(saved with --bert_save_mode model_all/model_tunable?); resuming needs one "
                              f"written with --bert_save_mode all or tunable")
        previous = checkpoint.get("args") or {}
        for flag in ("train_batch_size", "train_examples_number"):  # they fix the batches: same data order
            if flag in previous and flag in self.run_args and previous[flag] != self.run_args[flag]:
                raise StiltsError(f"--bert_load_mode state_all: the checkpoint's run used --{flag} {previous[flag]}, "
                                  f"this one {self.run_args[flag]}; resuming needs the same value")
        # checkpoints.check_resume_state found these to be dicts and train_state complete; what is
        # inside the dicts is checked by torch's load_state_dict, which fails with any of these errors.
        parts = {"optimizer": self.optimizer, "scheduler": self.scheduler}
        if "scaler" in checkpoint and self.scaler.is_enabled():
            parts["scaler"] = self.scaler
        for name, part in parts.items():
            try:
                part.load_state_dict(checkpoint[name])
            except (ValueError, KeyError, TypeError, AttributeError, RuntimeError) as e:
                raise StiltsError(f"{self.run_args.get('bert_load_path')}: its {name} state does not fit this "
                                  f"run (--bert_load_mode state_all; {type(e).__name__}: "
                                  f"{' '.join(str(e).split())[:200]})") from None
        state = checkpoint["train_state"]
        if state["global_step"] > total_steps:
            raise StiltsError(f"the checkpoint is at step {state['global_step']} but this run has only {total_steps} steps")
        if state.get("seed") is not None and state["seed"] != self.config.seed:
            logger.warning("resuming with seed %s; the checkpoint's run used %s: the data order changes",
                           self.config.seed, state["seed"])
        rngs = state["rng_per_rank"]
        if len(rngs) != self.ctx.world_size:
            logger.warning("resuming on %d processes, the checkpoint's run had %d: same batches, other dropout masks",
                           self.ctx.world_size, len(rngs))
        rng = rngs[self.ctx.rank % len(rngs)]
        torch.set_rng_state(rng["torch_rng"])
        if "cuda_rng" in rng and self.ctx.device.type == "cuda":
            torch.cuda.set_rng_state(rng["cuda_rng"], self.ctx.device)
        return {k: state[k] for k in ("epoch", "batch", "global_step")}, dict(state.get("val_history", {}))

    # ----------------------------------------------------------------------------- evaluation
    def predict(self, features, desc="Evaluating"):
        """Logits in file order, and the mean loss over examples.

        Batches are formed from length-sorted examples (least padding); each process scores every
        world_size-th batch and the results are gathered, so every process gets the full logits.
        """
        cfg, ctx = self.config, self.ctx
        if cfg.pad_to_max_length:
            order = np.arange(len(features))
        else:
            order = np.argsort(-features.lengths, kind="stable")
        batches = np.split(order, range(cfg.eval_batch_size, len(order), cfg.eval_batch_size))
        mine = batches[ctx.rank::ctx.world_size]
        model = self.compiled
        model.eval()
        results, loss_sum = [], torch.zeros((), device=ctx.device)
        with torch.inference_mode():
            for indices in tqdm(mine, desc=desc, leave=False, disable=not (ctx.is_main and cfg.verbose)):
                batch = self._batch(features, indices)
                logits = self._forward(model, batch).float()
                loss_sum += loss_fn(logits, batch["labels"], unwrap(self.model).regression, reduction="sum")
                results.append((indices, logits))  # kept on the device: no host sync per batch
        results = [(indices, logits.cpu().numpy()) for indices, logits in results]
        gathered = distributed.all_gather_objects(ctx, (results, loss_sum.item()))
        all_logits = np.zeros((len(features), unwrap(self.model).head.out_features), dtype=np.float32)
        for rank_results, _ in gathered:
            for indices, logits in rank_results:
                all_logits[indices] = logits
        total_loss = sum(loss for _, loss in gathered)
        return all_logits, total_loss / len(features)

    def validate(self, features, task=None):
        """{"logits", "loss", "metrics"} on a labeled split (task: e.g. mnli-mm for its metric keys)."""
        task = task or self.task
        logits, loss = self.predict(features, desc=f"Evaluating ({task.name} dev)")
        preds = predictions_from_logits(logits, task.is_regression)
        return {"loss": loss, "metrics": compute_metrics(task.name, preds, features.labels), "logits": logits}
