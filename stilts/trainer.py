"""One training loop: length-grouped batches, dynamic padding, mixed precision, DDP, resume.

Progress bars show only on a terminal (tqdm's disable=None): in a log file their updates are noise.

Batches are *global*: each optimizer step sees `train_batch_size` examples whatever the number of
processes or accumulation steps. A global batch is cut into `gradient_accumulation_steps` micro
batches, and each micro batch into one slice per process. Every slice's summed loss is divided by
the global batch size (times the world size, which DDP's gradient averaging divides out), so the
update equals that of one process on the whole batch, up to float noise.

The order of batches in epoch e is a pure function of (seed, e), so a run resumed from a
checkpoint taken at (epoch, batch) replays exactly the batches an uninterrupted run would.
"""
import contextlib
import logging
import math
import os
import time

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm
from transformers import get_linear_schedule_with_warmup

from stilts import distributed, speedups
from stilts.checkpoints import Position, make_checkpoint, restore_training, save_checkpoint, train_state
from stilts.cpu import warn_if_slow_bf16
from stilts.errors import NonFiniteTraining
from stilts.features import DeviceFeatures
from stilts.metrics import compute_metrics
from stilts.modeling import loss_fn, unwrap
from stilts.settings import STATE_SAVE_MODES, checkpoint_name

logger = logging.getLogger(__name__)

NO_DECAY = ("bias", "LayerNorm.weight", "LayerNorm.bias", "adapter.down_project.weight", "adapter.up_project.weight")


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


class StepWindow:
    """Loss, gradient norm and bad steps since the host last looked, kept on the device: no sync per step."""

    def __init__(self, device):
        self.device = device
        self.reset()

    def reset(self):
        self.sums = torch.zeros(4, device=self.device)  # loss, finite gradient norms, their count, bad steps
        self.first_bad = torch.tensor([-1.0, 0.0, 0.0], device=self.device)  # its step, loss, gradient norm
        self.steps = 0

    def add(self, mean_loss, grad_norm, bad, step):
        """One step: this process's share of the batch's mean loss, the gradient norm, whether it was bad
        (the same on every process)."""
        first = bad & (self.sums[3] == 0)
        self.first_bad = torch.where(first, torch.stack([torch.full_like(grad_norm, step), mean_loss, grad_norm]),
                                     self.first_bad)
        finite = torch.isfinite(grad_norm)  # not: an fp16 overflow the scaler skipped
        self.sums += torch.stack([mean_loss, torch.where(finite, grad_norm, 0.0), finite.float(), bad.float()])
        self.steps += 1

    def collect(self, ctx):
        """In one sync, then a new window: the mean loss over the window and all processes, the mean
        finite gradient norm, and (step, what, value) of the first bad step or None."""
        sums = distributed.all_reduce_sum(ctx, self.sums)
        loss, norms, finite, bad_steps, step, bad_loss, norm = torch.cat([sums, self.first_bad]).tolist()
        loss /= max(self.steps, 1)  # the processes' shares add up to each batch's mean
        self.reset()
        grad_norm = norms / max(finite, 1)  # the same on every process: DDP averaged the gradients
        if bad_steps == 0:
            return loss, grad_norm, None
        if not math.isfinite(bad_loss):
            what, value = "training loss", bad_loss
        elif not math.isfinite(norm):
            what, value = "gradient norm", norm
        else:
            what, value = "training loss of another process", math.nan
        return loss, grad_norm, (int(step), what, value)


def uses_cuda_graphs(settings, ctx):
    """Whether compiled code runs as CUDA graphs ("reduce-overhead"): recorded once per batch shape
    (length buckets keep those few) and replayed in one launch each, where a step of a small model is
    otherwise hundreds of kernel launches the host issues one by one. On one GPU only: not under DDP
    (its gradient hooks run between kernels) nor with gradient accumulation (a replay would write
    over the gradients the last micro batch left)."""
    return (settings.torch_compile and ctx.device.type == "cuda" and not ctx.enabled
            and settings.gradient_accumulation_steps == 1)


class Trainer:
    """Trains and scores one model as `settings` (stilts.settings.TrainSettings, seed drawn) say.

    max_seq_length is the fixed padding width of --pad_to_max_length; run_args (the run's flags)
    go into every checkpoint, as the seed's do; `reporter` (stilts.reporting, set by the caller once
    it may write) gets the curves.
    """

    def __init__(self, model, task, settings, ctx, output_dir, run_args, max_seq_length=128, verbose=True):
        if settings.seed < 0:
            raise ValueError(f"the Trainer needs a drawn seed, got {settings.seed}")
        self.task = task
        self.settings = settings
        self.ctx = ctx
        self.output_dir = output_dir
        self.run_args = run_args
        self.max_seq_length = max_seq_length
        self.verbose = verbose
        self.model = model.to(ctx.device)
        if ctx.device.type == "cpu" and not ctx.enabled and not settings.torch_compile:
            speedups.reuse_gradient_buffer(unwrap(model).get_input_embeddings())
        self.autocast_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(settings.precision)
        if ctx.is_main:  # one line per run, not one per process
            warn_if_slow_bf16(ctx.device, settings.precision)
        self.scaler = torch.amp.GradScaler(
            ctx.device.type, enabled=settings.precision == "fp16",
            init_scale=settings.loss_scale or 2.0 ** 16,
            growth_interval=2 ** 31 - 1 if settings.loss_scale else 2000)
        # `compiled` runs evaluation; `wrapped` (DDP around it) runs training. Evaluating through DDP
        # would broadcast buffers on every forward and hang when ranks score different batch counts.
        self.cuda_graphs = uses_cuda_graphs(settings, ctx)
        self.compiled = self.model
        if settings.torch_compile:
            self.compiled = torch.compile(self.model, dynamic=True,
                                          mode="reduce-overhead" if self.cuda_graphs else None)
        self.wrapped = self.compiled
        if ctx.enabled:
            device_ids = [ctx.local_rank] if ctx.device.type == "cuda" else None
            self.wrapped = DistributedDataParallel(self.compiled, device_ids=device_ids)
        self.optimizer = None
        self.scheduler = None
        self.position, self.history = Position(), {}  # where training stands, and its dev scores per epoch
        self.steps_per_epoch = self.total_steps = None
        self.last_validation = None  # the dev scores after the last epoch trained, for --do_val_history
        self.window = StepWindow(ctx.device)
        self.device_splits = {}  # id(features) -> (features, DeviceFeatures): each split is uploaded once
        self.reporter = None
        self.global_step = 0  # the optimizer steps the weights have taken (the curves' x axis)
        self.train_examples, self.train_seconds = 0, 0.0  # of the last train(), dev scoring left out
        self.scored_examples, self.scored_seconds = 0, 0.0  # every split predict() scored

    # ----------------------------------------------------------------------------- helpers
    def _autocast(self):
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.ctx.device.type, dtype=self.autocast_dtype)

    def _device_split(self, features):
        """The split's DeviceFeatures, made at its first use."""
        if id(features) not in self.device_splits:  # the entry holds `features`: its id stays its own
            pad_to = self.max_seq_length if self.settings.pad_to_max_length else None
            self.device_splits[id(features)] = (features, DeviceFeatures(
                features, self.ctx.device, pad_to=pad_to, multiple_of=self.settings.width_multiple,
                cap=self.max_seq_length))
        return self.device_splits[id(features)][1]

    def _forward(self, model, batch):
        if self.cuda_graphs:  # a new step: the graphs may reuse the memory of the last one's outputs
            torch.compiler.cudagraph_mark_step_begin()
        with self._autocast():
            return model(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])

    def make_optimizer(self, total_steps):
        """AdamW (no decay for biases and LayerNorms) and the linear warm-up-then-decay schedule over
        `total_steps`: what train() steps with, and what scripts that time single steps build."""
        params = [(n, p) for n, p in self.model.named_parameters() if p.requires_grad]
        groups = [
            {"params": [p for n, p in params if not any(nd in n for nd in NO_DECAY)],
             "weight_decay": self.settings.weight_decay},
            {"params": [p for n, p in params if any(nd in n for nd in NO_DECAY)], "weight_decay": 0.0},
        ]
        # The fused kernel reads each parameter once per step (foreach makes ~10 passes): on CPU this is
        # a good share of a MiniLM step, since the 30k-row word embeddings are updated every step.
        fused = self.ctx.device.type in ("cpu", "cuda")
        self.optimizer = torch.optim.AdamW(groups, lr=self.settings.learning_rate, eps=self.settings.adam_epsilon,
                                           fused=fused, foreach=not fused)
        self.skip_on_device = fused  # the fused kernel can skip a bad step without the host looking
        warmup = int(self.settings.warmup_proportion * total_steps)
        self.scheduler = get_linear_schedule_with_warmup(self.optimizer, warmup, total_steps)

    def save(self, path, save_mode, position=None):
        """Write a checkpoint atomically (main process only; every process calls it); at a `position`
        of training, with the training state that resumes from there when the mode keeps it."""
        keeps_state = position is not None and save_mode in STATE_SAVE_MODES
        state = train_state(position, self.settings.seed, self.history, self.ctx) if keeps_state else None
        if self.ctx.is_main:
            checkpoint = make_checkpoint(self.model, save_mode, self.run_args, self.optimizer,
                                         self.scheduler, self.scaler, state)
            save_checkpoint(path, checkpoint)
        distributed.barrier(self.ctx)

    # ----------------------------------------------------------------------------- training
    def prepare(self, features, resume=None):
        """Optimizer and schedule for training on `features`, restored from a state_all checkpoint
        when resuming. The command line calls it before writing anything, so a checkpoint that
        cannot resume this run is refused with the output folder untouched."""
        self.steps_per_epoch = math.ceil(len(features) / self.settings.train_batch_size)
        self.total_steps = max(1, round(self.steps_per_epoch * self.settings.num_train_epochs))
        self.make_optimizer(self.total_steps)
        self.position, self.history = Position(), {}
        if resume is not None:
            parts = {"optimizer": self.optimizer, "scheduler": self.scheduler}
            if self.scaler.is_enabled():
                parts["scaler"] = self.scaler
            self.position, self.history = restore_training(resume, parts, self.run_args, self.settings.seed,
                                                           self.total_steps, self.ctx)
        self.global_step = self.position.global_step

    def train(self, features, val_features=None):
        """Train for num_train_epochs (after prepare(), or from scratch); returns the per-epoch dev
        results if val_features is given."""
        if self.optimizer is None:
            self.prepare(features)
        cfg, position, history = self.settings, self.position, self.history
        steps_per_epoch, total_steps = self.steps_per_epoch, self.total_steps
        lengths = features.lengths
        if self.ctx.is_main and self.verbose:
            logger.info("training: %d examples, batch %d, %d steps (%d per epoch)",
                        len(features), cfg.train_batch_size, total_steps, steps_per_epoch)

        show = self.ctx.is_main and self.verbose
        started, self.train_examples, scoring_before = time.perf_counter(), 0, self.scored_seconds
        self._examples_since, self._since = 0, started
        epochs_bar = tqdm(total=math.ceil(total_steps / steps_per_epoch), desc="Epoch", disable=None if show else True,
                          initial=position.epoch)
        data = self._device_split(features)
        self.wrapped.train()
        while position.global_step < total_steps:
            epoch = position.epoch
            batches = epoch_batches(lengths, cfg.train_batch_size, cfg.seed, epoch, cfg.group_by_length)
            order = data.upload(np.concatenate(batches))  # the epoch's batches, one after another
            starts = np.cumsum([0] + [len(b) for b in batches])
            last_batch = min(len(batches), position.batch + total_steps - position.global_step)
            steps_bar = tqdm(range(position.batch, last_batch), desc="Training", leave=False,
                             disable=None if show else True)
            for b in steps_bar:
                self._train_step(data, batches[b], order[starts[b]:starts[b + 1]], position)
                position.global_step += 1
                position.batch = b + 1
                self.global_step = position.global_step
                self.train_examples += len(batches[b])
                self._examples_since += len(batches[b])
                saving = cfg.train_save_every and (position.global_step % cfg.train_save_every == 0
                                                   or b == len(batches) - 1)
                # The host waits for the device only here: to log, and before a checkpoint or the end.
                if saving or position.global_step % cfg.logging_steps == 0 or b == last_batch - 1:
                    loss = self._check_window(position)
                    steps_bar.set_postfix(loss=f"{loss:.4f}", lr=f"{self.scheduler.get_last_lr()[0]:.2e}")
                if saving:
                    self._save_periodic(epoch, b, position)
                    self._since = time.perf_counter()  # examples/s counts training time only
            steps_bar.close()
            if val_features is not None:
                result = self.last_validation = self.validate(val_features)
                history[str(epoch)] = {"loss": result["loss"], "metrics": result["metrics"]}
                self.report_eval({**result["metrics"], "loss": result["loss"]})
                self.wrapped.train()
                self._since = time.perf_counter()
            position = Position(epoch + 1, 0, position.global_step)
            epochs_bar.update(1)
        epochs_bar.close()
        self.train_seconds = time.perf_counter() - started - (self.scored_seconds - scoring_before)  # training alone
        return history

    def train_step(self, features, indices, position=None):
        """One optimizer step over these examples of `features` (benchmarks and tests: train() uploads
        each epoch's indices once); `position` numbers the step (a Position; the first by default)."""
        data = self._device_split(features)
        self._train_step(data, indices, data.upload(indices), position or Position())

    def warm_up(self, features, val_features=None):
        """Compile the model and record its CUDA graphs for each batch shape of training on `features`
        (one process, no accumulation) and of scoring `val_features`, leaving the weights and the
        random state as they were: a benchmark then times the steady state (--torch_compile)."""
        cfg, cuda = self.settings, self.ctx.device.type == "cuda"
        cpu_rng = torch.get_rng_state()
        cuda_rng = torch.cuda.get_rng_state(self.ctx.device) if cuda else None
        data = self._device_split(features)
        shapes = {}
        for epoch in range(math.ceil(cfg.num_train_epochs)):
            for indices in epoch_batches(features.lengths, cfg.train_batch_size, cfg.seed, epoch, cfg.group_by_length):
                shapes.setdefault((len(indices), data.width(indices)), indices)
        try:
            self.wrapped.train()
            for indices in shapes.values():
                batch = data.batch(indices, data.upload(indices))
                for _ in range(3):  # CUDA graph trees run a new shape once, record it, then replay it
                    logits = self._forward(self.wrapped, batch)
                    loss_fn(logits, batch["labels"], unwrap(self.model).regression).backward()
                    self.model.zero_grad(set_to_none=True)
            for _ in range(2 if val_features is not None else 0):
                self.predict(val_features, desc="Warming up")
        finally:
            torch.set_rng_state(cpu_rng)
            if cuda:
                torch.cuda.set_rng_state(cuda_rng, self.ctx.device)

    def _train_step(self, data, global_indices, on_device, position):
        """One optimizer step over a global batch (example indices on the host, and the same on the
        device); its loss and gradient norm go into self.window."""
        cfg, ctx = self.settings, self.ctx
        n_global = len(global_indices)
        micro_batches = np.array_split(np.arange(n_global), cfg.gradient_accumulation_steps)
        loss_sum = torch.zeros((), device=ctx.device)
        for m, micro in enumerate(micro_batches):
            mine = np.array_split(micro, ctx.world_size)[ctx.rank]  # positions in the batch: a contiguous run
            weight = 1.0
            if len(mine) == 0:  # fewer examples than slices: run one with zero weight to keep DDP in step
                mine, weight = np.arange(1), 0.0
            batch = data.batch(global_indices[mine], on_device[mine[0]:mine[-1] + 1])
            sync_now = m == len(micro_batches) - 1
            no_sync = self.wrapped.no_sync() if ctx.enabled and not sync_now else contextlib.nullcontext()
            with no_sync:
                logits = self._forward(self.wrapped, batch)
                loss = loss_fn(logits, batch["labels"], unwrap(self.model).regression, reduction="sum") * weight
                self.scaler.scale(loss * (ctx.world_size / n_global)).backward()
            loss_sum += loss.detach()
        self.scaler.unscale_(self.optimizer)
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.max_grad_norm or math.inf)
        # A non-finite loss (no loss scale can fix the forward), or in fp32/bf16 a non-finite gradient,
        # is a bad step: its update is skipped on the device (fp16: the scaler skips overflows), and
        # the host learns of it at the next check, before any checkpoint.
        bad = ~torch.isfinite(loss_sum)
        if not self.scaler.is_enabled():
            bad |= ~torch.isfinite(grad_norm)
        bad = distributed.all_reduce_max(ctx, bad)  # every process skips the same steps (no host sync)
        if not self.scaler.is_enabled():
            if self.skip_on_device:
                self.optimizer.found_inf = bad.float()  # read by the fused AdamW kernel: no update when 1
            elif bad.item():  # an optimizer without found_inf: the host must look at every step
                self.window.add(loss_sum / n_global, grad_norm.float(), bad, position.global_step + 1)
                self._check_window(position)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.window.add(loss_sum / n_global, grad_norm.float(), bad, position.global_step + 1)

    def _check_window(self, position):
        """Bring the steps since the last check to the host (one sync, one all-reduce): their mean
        loss; if one of them was bad, keep the weights (no bad step updated them) and stop."""
        loss, grad_norm, first_bad = self.window.collect(self.ctx)
        if self.reporter is not None:
            now = time.perf_counter()
            self.reporter.scalars("train", {"loss": loss, "learning_rate": self.scheduler.get_last_lr()[0],
                                            "grad_norm": grad_norm,
                                            "examples_per_s": self._examples_since / (now - self._since)},
                                  position.global_step)
            self._examples_since, self._since = 0, now
        if first_bad is None:
            return loss
        step, what, value = first_bad
        epoch, batch = divmod(step - 1, self.steps_per_epoch)
        where = f"step {step} (epoch {epoch}, batch {batch})"
        path = os.path.join(self.output_dir, checkpoint_name("all_state___last_good", self.settings.checkpoint_format))
        self.optimizer.zero_grad(set_to_none=True)
        self.save(path, "all", position)
        raise NonFiniteTraining(what, value, where, position.global_step, path)

    def _save_periodic(self, epoch, batch, position):
        name = checkpoint_name(f"all_state___epoch{epoch:04d}___batch{batch:06d}", self.settings.checkpoint_format)
        self.save(os.path.join(self.output_dir, name), self.settings.periodic_save_mode, position)

    # ----------------------------------------------------------------------------- evaluation
    def predict(self, features, desc="Evaluating"):
        """Logits in file order, and the mean loss over examples.

        Batches are formed from length-sorted examples (least padding); each process scores every
        world_size-th batch and the results are gathered, so every process gets the full logits.
        """
        cfg, ctx = self.settings, self.ctx
        started = time.perf_counter()
        if cfg.pad_to_max_length:
            order = np.arange(len(features))
        else:
            order = np.argsort(-features.lengths, kind="stable")
        batches = np.split(order, range(cfg.eval_batch_size, len(order), cfg.eval_batch_size))
        mine = batches[ctx.rank::ctx.world_size]
        data = self._device_split(features)
        on_device = data.upload(np.concatenate([np.zeros(0, np.int64), *mine]))
        starts = np.cumsum([0] + [len(b) for b in mine])
        model = self.compiled
        model.eval()
        results, loss_sum = [], torch.zeros((), device=ctx.device)
        with torch.inference_mode():
            bars = None if ctx.is_main and self.verbose else True
            for b, indices in enumerate(tqdm(mine, desc=desc, leave=False, disable=bars)):
                batch = data.batch(indices, on_device[starts[b]:starts[b + 1]])
                logits = self._forward(model, batch).float()
                if self.cuda_graphs:  # the next replay writes over the graph's output
                    logits = logits.clone()
                loss_sum += loss_fn(logits, batch["labels"], unwrap(self.model).regression, reduction="sum")
                results.append((indices, logits))  # kept on the device: no host sync per batch
        results = [(indices, logits.cpu().numpy()) for indices, logits in results]
        gathered = distributed.all_gather_objects(ctx, (results, loss_sum.item()))
        all_logits = np.zeros((len(features), self.task.num_labels), dtype=np.float32)
        for rank_results, _ in gathered:
            for indices, logits in rank_results:
                all_logits[indices] = logits
        total_loss = sum(loss for _, loss in gathered)
        self.scored_examples += len(features)
        self.scored_seconds += time.perf_counter() - started
        return all_logits, total_loss / len(features)

    def report_eval(self, scores):
        """Dev scores (metrics and loss) to the reporter, at the step the weights are from."""
        if self.reporter is not None:
            self.reporter.scalars("eval", scores, self.global_step)

    def validate(self, features, task=None):
        """{"logits", "loss", "metrics"} on a labeled split (task: e.g. mnli-mm for its metric keys)."""
        task = task or self.task
        logits, loss = self.predict(features, desc=f"Evaluating ({task.name} dev)")
        preds = task.predictions(logits)
        return {"loss": loss, "metrics": compute_metrics(task, preds, features.labels), "logits": logits}
