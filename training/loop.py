"""The training run behind ``vl-attention train``: :func:`fit` (one process or ``torchrun``).

Each step samples a batch of places (:mod:`.sampling`), optionally adds
cached hard negatives, runs model and loss as one module (wrapped in
DistributedDataParallel when several processes train), and takes an
optimiser step with optional gradient clipping and, on CUDA, fp16 autocast
with gradient scaling. Parts whose parameters are all frozen stay in eval
mode; the features of a frozen trunk, or of its frozen first stages, are
computed once and reused (only the stages after them run each step).

Every ``checkpoint_every_steps`` steps and at each epoch end a checkpoint
(:mod:`.checkpoint`) is written atomically, so ``resume=True`` after a kill
replays the remaining steps exactly. The starting weights and each epoch's
are validated (Recall@N, :mod:`.validation`); the weights with the best
Recall@5 are kept, ties going to the better Recall@1, then PR-AUC, then the
earlier weights (so a run whose training never helps keeps its start). At the end
the best weights (with PCA-whitening fitted on training descriptors when the
model asks for it) are written as a model preset plus an ONNX export with its
model card, ready for ``build-map`` and the node.
"""

from dataclasses import dataclass, field, replace
import logging
import math
from pathlib import Path
import time
from typing import Any, Callable, Dict, List, Optional, Tuple, Union

import numpy as np
import torch
from torch import nn

from vl_attention.config import ConfigError, to_dict
from vl_attention.engine.card_builder import weights_sha256
from vl_attention.models import build_model
from vl_attention.models.descriptor import DescriptorModel
from vl_attention.models.initialisation import preset_seed
from vl_attention.models.modes import evaluating
from vl_attention.models.outputs import ModelOutput
from vl_attention.training import distributed
from vl_attention.training.checkpoint import (load_checkpoint, restore_rng_state, rng_state,
                                              save_checkpoint)
from vl_attention.training.config import model_config, ScheduleConfig, TrainConfig
from vl_attention.training.data import load_training_data, TrainingData
from vl_attention.training.distributed import DistributedContext
from vl_attention.training.losses import make_loss
from vl_attention.training.outputs import RunArtifacts, RunLogger
from vl_attention.training.sampling import Batch, HardNegativeCache, ImageRows
from vl_attention.training.trainable import (cache_backbone_features, has_frozen_stages,
                                             make_optimizer, outputs_from_cache,
                                             set_training_mode, TapFeatures)
from vl_attention.training.validation import evaluate_retrieval

LOGGER = logging.getLogger(__name__)
# the validation scores that rank checkpoints, most important first
SELECTION = ('recall_at_5', 'recall_at_1', 'pr_auc')
NO_BEST = {key: -1.0 for key in SELECTION}
LossParts = Dict[str, float]


class TrainStep(nn.Module):
    """Model and loss as one module, so DistributedDataParallel sees one forward per step."""

    def __init__(self, model: DescriptorModel, loss: nn.Module) -> None:
        super().__init__()
        self.model, self.loss = model, loss

    def forward(self, images: torch.Tensor, features: Optional[TapFeatures],
                batch: Batch) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
        """Return ``(total loss, parts)`` of one batch (features: cached trunk output or None)."""
        output: ModelOutput
        if features is None:
            output = self.model.outputs(images)
        else:
            output = outputs_from_cache(self.model, features, images)
        return self.loss(output, batch)


def lr_factor(schedule: ScheduleConfig, *, steps_per_epoch: int,
              total_steps: int) -> Callable[[int], float]:
    """Return ``step -> learning-rate multiplier`` of a :class:`ScheduleConfig`."""
    def factor(step: int) -> float:
        warm = min(1.0, (step + 1) / schedule.warmup_steps) if schedule.warmup_steps else 1.0
        if schedule.name == 'step':
            return warm * schedule.gamma ** (step // (schedule.step_epochs * steps_per_epoch))
        if schedule.name == 'cosine':
            progress = min(step / max(total_steps - 1, 1), 1.0)
            cosine = 0.5 * (1.0 + math.cos(math.pi * progress))
            return warm * (schedule.min_lr_ratio + (1.0 - schedule.min_lr_ratio) * cosine)
        return warm
    return factor


@dataclass
class Run:
    """Everything that changes while training, and what does not (one per process)."""

    cfg: TrainConfig
    context: DistributedContext
    model: DescriptorModel
    loss: nn.Module
    step_module: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    scaler: torch.amp.GradScaler
    data: TrainingData
    features: Optional[TapFeatures]
    generators: Dict[str, torch.Generator]
    negatives: Optional[HardNegativeCache]
    artifacts: RunArtifacts
    step: int = 0
    # validation results, one per epoch
    history: List[Dict[str, Any]] = field(default_factory=list)
    # {'recall_at_5', 'recall_at_1', 'pr_auc', 'step', 'epoch'}
    best: Dict[str, float] = field(default_factory=lambda: dict(NO_BEST))
    losses: List[float] = field(default_factory=list)              # total loss per step
    loss_parts: Dict[str, List[float]] = field(default_factory=dict)  # each part per step
    train_seconds: float = 0.0
    train_images: int = 0

    @property
    def amp(self) -> bool:
        """Whether fp16 autocast and gradient scaling are on (CUDA only)."""
        return uses_amp(self.cfg, self.context)


def uses_amp(cfg: TrainConfig, context: DistributedContext) -> bool:
    """Whether a run uses fp16 autocast and gradient scaling (asked for, and on CUDA)."""
    return cfg.mixed_precision and context.device.type == 'cuda'


def initial_model(cfg: TrainConfig, device: Union[str, torch.device]) -> DescriptorModel:
    """Build the recipe's model as a run does, seeded, before :func:`initialise_head`.

    PCA-whitening is left out: it is fitted after training, on the trained descriptors.
    """
    torch.manual_seed(cfg.seed)
    config = replace(model_config(cfg), whitening_dim=0)
    # build_model seeds random parts from the preset; the recipe seed varies that start (0: as is)
    return build_model(config, init_seed=preset_seed(config) ^ cfg.seed).to(device)


def _build(cfg: TrainConfig, context: DistributedContext, artifacts: RunArtifacts) -> Run:
    """Build model, data, loss, optimiser and the rest of a run at step 0."""
    model = initial_model(cfg, context.device)
    loss = make_loss(cfg.loss, model).to(context.device)
    optimizer = make_optimizer(cfg.optimizer, model, loss)   # refuses nothing to train
    data = load_training_data(cfg, model.preprocessing)
    features = None
    if cfg.cache_backbone_features and has_frozen_stages(model):
        features = cache_backbone_features(model, data.images, device=context.device)
    step_module: nn.Module = TrainStep(model, loss)
    if context.enabled:
        step_module = nn.parallel.DistributedDataParallel(
            step_module, device_ids=[context.local_rank] if context.device.type == 'cuda'
            else None, find_unused_parameters=cfg.find_unused_parameters)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor(
        cfg.schedule, steps_per_epoch=cfg.steps_per_epoch, total_steps=cfg.total_steps))
    generators = {'sampler': torch.Generator().manual_seed(cfg.seed * 1009 + context.rank)}
    if isinstance(getattr(loss, 'generator', None), torch.Generator):
        generators['mining'] = loss.generator.manual_seed(cfg.seed * 1013 + context.rank)
    negatives = (HardNegativeCache(data.ground_truth, cfg.sampling)
                 if cfg.sampling.hard_negatives_per_place else None)
    return Run(cfg=cfg, context=context, model=model, loss=loss, step_module=step_module,
               optimizer=optimizer, scheduler=scheduler,
               scaler=torch.amp.GradScaler('cuda', enabled=uses_amp(cfg, context)),
               data=data, features=features, generators=generators, negatives=negatives,
               artifacts=artifacts)


def initialise_head(model: DescriptorModel, images: ImageRows, *,
                    device: Union[str, torch.device]) -> None:
    """Initialise NetVLAD-style centroids by k-means over local features of training images.

    Uses the first 1000 ``images`` (:class:`~.sampling.ImageRows`); heads without centroids
    are left as they are (HAF has them with ``level_pooling: netvlad``). This is how a run
    starts, before its epoch-0 validation.
    """
    aggregator: Any = model.aggregator     # a head with centroids has initialise_centroids
    if not getattr(aggregator, 'uses_centroids', False):
        return
    from vl_attention.models.netvlad import sample_local_features, sample_tap_features
    rows = np.arange(min(len(images), 1000))
    batches = (tensors.to(device) for _, tensors in images.chunks(rows))
    sample = sample_tap_features if getattr(aggregator, 'multi_level', False) \
        else sample_local_features
    aggregator.initialise_centroids(sample(model, batches))
    LOGGER.info('initialised %s centroids by k-means on %d training images',
                type(aggregator).__name__, len(rows))


def _embed_training_rows(run: Run, rows: np.ndarray) -> np.ndarray:
    """Descriptors of training rows with the current weights (eval mode, no gradients)."""
    model = run.model
    with torch.no_grad(), evaluating(model):
        chunks = []
        for start in range(0, len(rows), 64):
            chunk = rows[start:start + 64]
            images = run.data.images[chunk].to(run.context.device)
            if run.features is None:
                output = model.outputs(images)
            else:
                index = torch.from_numpy(chunk).to(run.context.device)
                output = outputs_from_cache(
                    model, {tap: value[index] for tap, value in run.features.items()}, images)
            chunks.append(output.descriptor.float().cpu())
    return torch.cat(chunks).numpy()


def _batch_rows(run: Run) -> np.ndarray:
    """Rows of the next batch: sampled places, plus mined hard negatives when asked for."""
    rows = run.data.sampler.sample(run.generators['sampler'])
    if run.negatives is None:
        return rows
    if run.negatives.due(run.step):
        run.negatives.refresh(lambda picked: _embed_training_rows(run, picked),
                              run.generators['sampler'])
    anchors = rows[::run.cfg.sampling.views_per_place]
    hard = run.negatives.hardest_negatives(anchors, _embed_training_rows(run, anchors))
    return np.concatenate([rows, np.setdiff1d(hard, rows)])


def _to_device(batch: Batch, device: torch.device) -> Batch:
    """Move every tensor of a batch to ``device``."""
    return replace(batch, **{name: getattr(batch, name).to(device) for name in (
        'indices', 'images', 'positions_m', 'poses', 'positive_mask', 'negative_mask')})


def train_step(run: Run) -> Tuple[float, LossParts]:
    """One optimiser step; returns (and records) the total loss and its parts as floats."""
    started = time.perf_counter()
    rows = _batch_rows(run)
    batch = _to_device(run.data.builder(rows), run.context.device)
    features = None
    if run.features is not None:
        features = {tap: value[batch.indices] for tap, value in run.features.items()}
    with torch.autocast(run.context.device.type, dtype=torch.float16, enabled=run.amp):
        total, parts = run.step_module(batch.images, features, batch)
    run.optimizer.zero_grad(set_to_none=True)
    run.scaler.scale(total).backward()
    if run.cfg.max_grad_norm:
        run.scaler.unscale_(run.optimizer)
        torch.nn.utils.clip_grad_norm_(
            [p for group in run.optimizer.param_groups for p in group['params']],
            run.cfg.max_grad_norm)
    run.scaler.step(run.optimizer)
    run.scaler.update()
    run.scheduler.step()
    run.step += 1
    run.train_seconds += time.perf_counter() - started
    run.train_images += len(rows)
    total_value = float(total.detach())
    part_values = {name: float(value) for name, value in parts.items()}
    run.losses.append(total_value)
    for name, value in part_values.items():
        run.loss_parts.setdefault(name, []).append(value)
    return total_value, part_values


def validate(run: Run) -> Optional[Dict[str, Any]]:
    """Return validation metrics of the current weights (main process; None without a set)."""
    if run.data.held_out is None or not run.context.is_main:
        return None
    result = evaluate_retrieval(run.model, run.data.held_out, n_values=run.cfg.recall_n,
                                device=run.context.device)
    return dict(result, step=run.step, epoch=run.step // run.cfg.steps_per_epoch)


def _replica_hashes(run: Run) -> List[str]:
    """Weights fingerprint of every process; replicas that differ are a bug, so fail."""
    hashes = run.context.gather(weights_sha256(run.model))
    if len(set(hashes)) > 1:
        raise RuntimeError(f'distributed replicas diverged at step {run.step}: {hashes}')
    return hashes


def save_run(run: Run) -> None:
    """Checkpoint every process's state (written by the main process, atomically)."""
    per_rank = run.context.gather({
        'rng': rng_state(run.generators),
        'negatives': run.negatives.state_dict() if run.negatives is not None else None})
    hashes = _replica_hashes(run)
    if run.context.is_main:
        save_checkpoint(run.artifacts.checkpoint, {
            'config': to_dict(run.cfg), 'step': run.step, 'world_size': run.context.world_size,
            'model': run.model.state_dict(), 'loss': run.loss.state_dict(),
            'optimizer': run.optimizer.state_dict(), 'scheduler': run.scheduler.state_dict(),
            'scaler': run.scaler.state_dict(), 'history': run.history, 'best': run.best,
            'losses': run.losses, 'loss_parts': run.loss_parts, 'ranks': per_rank,
            'train_seconds': run.train_seconds, 'train_images': run.train_images,
            'replica_weights_sha256': hashes})
    run.context.barrier()


def _check_resumable(run: Run, payload: Dict[str, Any]) -> None:
    """Refuse to resume a checkpoint of another recipe or process count."""
    stored, current = dict(payload['config']), to_dict(run.cfg)
    # more epochs extend a run; anything else would not replay the same steps
    stored.pop('epochs'), current.pop('epochs')
    changed = sorted(key for key in current if stored.get(key) != current[key])
    if changed:
        raise ConfigError(f'cannot resume {run.artifacts.checkpoint}: the recipe changed in '
                          f'{changed}; resume with the recipe it was started with '
                          f'({run.artifacts.recipe})')
    if payload['world_size'] != run.context.world_size:
        raise ConfigError(f'the run was started with {payload["world_size"]} processes; '
                          f'resume it with as many (now {run.context.world_size})')


def restore_run(run: Run) -> None:
    """Continue from the last checkpoint exactly where it was written."""
    payload = load_checkpoint(run.artifacts.checkpoint)
    _check_resumable(run, payload)
    run.model.load_state_dict(payload['model'])
    run.loss.load_state_dict(payload['loss'])
    run.optimizer.load_state_dict(payload['optimizer'])
    run.scheduler.load_state_dict(payload['scheduler'])
    run.scaler.load_state_dict(payload['scaler'])
    for key in ('step', 'history', 'best', 'losses', 'train_seconds', 'train_images'):
        setattr(run, key, payload[key])
    run.loss_parts = payload.get('loss_parts', {})   # absent in checkpoints of older releases
    mine = payload['ranks'][run.context.rank]
    restore_rng_state(mine['rng'], run.generators)
    if run.negatives is not None and mine['negatives'] is not None:
        run.negatives.load_state_dict(mine['negatives'])
    LOGGER.info('resumed %s at step %d', run.artifacts.checkpoint, run.step)


def selection_key(scores: Dict[str, float]) -> Tuple[float, ...]:
    """Return the sort key of "best": Recall@5, then Recall@1, then PR-AUC (higher is better)."""
    return tuple(scores[key] for key in SELECTION)


def _validate_and_keep_best(run: Run, logger: RunLogger) -> None:
    """Validate the current weights; keep them if they are the best so far."""
    result = validate(run)
    if result is None:
        return
    run.history.append(result)
    logger.validation(result)
    LOGGER.info('epoch %d: validation Recall@N %s, PR-AUC %.3f', result['epoch'],
                result['recall_at_n'], result['pr_auc'])
    scores = {'recall_at_5': result['recall_at_n']['5'], 'recall_at_1': result['recall_at_n']['1'],
              'pr_auc': result['pr_auc']}
    if selection_key(scores) > selection_key(run.best):
        run.best = {**scores, 'step': run.step, 'epoch': result['epoch']}
        run.artifacts.save_best_weights(run.model)


def train_loop(run: Run, logger: RunLogger) -> None:
    """Run the remaining steps with checkpoints, validation and logs."""
    cfg = run.cfg
    set_training_mode(run.model)
    run.loss.train()
    if run.step == 0:         # the starting point (ImageNet trunk, initialised head)
        _validate_and_keep_best(run, logger)
    progress = logger.progress(total=cfg.total_steps, initial=run.step)
    while run.step < cfg.total_steps:
        total, parts = train_step(run)
        progress.update(1)
        if run.step % cfg.log_every_steps == 0:
            logger.step(run, total, parts)
        epoch_end = run.step % cfg.steps_per_epoch == 0
        if epoch_end:
            _validate_and_keep_best(run, logger)
        if epoch_end or run.step % cfg.checkpoint_every_steps == 0:
            save_run(run)
    progress.close()


RESUME_NEEDS_SHARED_OUT = ('the processes see --out differently: to resume, every node must '
                           'see the same --out (a filesystem they all share)')


def check_every_process(context: DistributedContext, problem: Optional[str], *,
                        uneven_hint: Optional[str] = None) -> None:
    """Raise the first process's ``problem`` (str or None) in every process.

    Each process checks its own view (of ``--out``, say); were only one to stop,
    the others would fail in their next collective with the backend's error
    (gloo: "Connection closed by peer") or wait there until the timeout.
    ``uneven_hint`` is added when some processes found no problem.
    """
    reported = [(rank, text) for rank, text in enumerate(context.gather(problem)) if text]
    if not reported:
        return
    rank, text = reported[0]
    if context.enabled:
        text = f'process {rank} of {context.world_size}: {text}'
        if uneven_hint and len(reported) < context.world_size:
            text = f'{text}; {uneven_hint}'
    raise ConfigError(text)


def fit(cfg: TrainConfig, out_dir: Union[str, Path], *,
        resume: bool = False) -> Optional[Dict[str, Any]]:
    """Train the recipe ``cfg`` into ``out_dir``; return the run summary (a dict).

    Under ``torchrun`` every process calls this; the main process writes the
    outputs (:mod:`.outputs`: ``summary.json``, the per-step losses in
    ``losses.json``, ...) and returns the summary, the others return None.
    ``resume`` continues the run in ``out_dir`` from its last checkpoint.
    """
    context = distributed.setup(cfg.device)
    try:
        artifacts = RunArtifacts(out_dir, is_main=context.is_main)
        check_every_process(context, artifacts.problem(resume=resume),
                            uneven_hint=RESUME_NEEDS_SHARED_OUT if resume else None)
        if not resume:
            artifacts.write_recipe(cfg)
        run = _build(cfg, context, artifacts)
        resumed_from = None
        if resume:
            restore_run(run)
            resumed_from = run.step
        elif cfg.fit_netvlad_centroids:
            initialise_head(run.model, run.data.images, device=context.device)
        with artifacts.logger(run) as logger:
            train_loop(run, logger)
        hashes = _replica_hashes(run)
        images = sum(run.context.gather(run.train_images))
        return artifacts.finish(run, replica_hashes=hashes, images_all_ranks=images,
                                resumed_from_step=resumed_from)
    finally:
        distributed.teardown(context)
