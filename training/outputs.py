"""What a training run writes, and where.

The run directory (``--out``)::

    recipe.yaml             the recipe as run (resume checks against it)
    checkpoints/last.pt     resumable state (written atomically)
    best_model.pt           weights with the best validation Recall@5
    model.pt, model.yaml    final weights and the model preset that loads them
    export/                 model.onnx + model_card.json (``--export-dir`` of build-map / node)
    tensorboard/            event files (``tensorboard --logdir <out>/tensorboard``)
    summary.json            validation history, throughput, replica fingerprints
    losses.json             every step's loss: {total: [...], parts: {name: [...]}}
"""

import contextlib
from dataclasses import replace
import json
import logging
from pathlib import Path
import time
from typing import Any, Dict, Iterator, List, Optional, TYPE_CHECKING, Union

import numpy as np
import torch
from tqdm import tqdm
import yaml

from vl_attention.config import to_dict
from vl_attention.engine.card_builder import make_model_card
from vl_attention.engine.export import export_onnx
from vl_attention.io import atomic_path, atomic_write_text, json_safe
from vl_attention.models.descriptor import DescriptorModel
from vl_attention.models.pose_attention import pose_head, set_pose_origin
from vl_attention.models.whitening import PCAWhitening
from vl_attention.training.config import model_config, TrainConfig
from vl_attention.training.validation import embed_rows

if TYPE_CHECKING:
    from torch.utils.tensorboard import SummaryWriter

# training.loop.Run: loop imports this module, so importing its type back, even only for
# type checking, would be an import cycle (test/test_layering.py); attributes are unchecked
Run = Any

LOGGER = logging.getLogger(__name__)
WHITENING_SAMPLES = 4096


class RunLogger:
    """Progress bar and tensorboard scalars (main process only)."""

    def __init__(self, writer: Optional['SummaryWriter'], enabled: bool) -> None:
        self.writer, self.enabled = writer, enabled

    def progress(self, *, total: int, initial: int) -> tqdm:
        """Return a progress bar over the steps (hidden off a terminal and on other ranks)."""
        return tqdm(total=total, initial=initial, unit='step', dynamic_ncols=True,
                    disable=None if self.enabled else True)

    def step(self, run: Run, total: float, parts: Dict[str, float]) -> None:
        """Log the loss, its parts and the learning rate of the latest step."""
        if self.writer is None:
            return
        self.writer.add_scalar('train/loss', total, run.step)
        for name, value in parts.items():
            self.writer.add_scalar(f'train/{name}', value, run.step)
        self.writer.add_scalar('train/lr', run.scheduler.get_last_lr()[0], run.step)

    def validation(self, result: Dict[str, Any]) -> None:
        """Log validation Recall@N and PR-AUC, overall and per condition."""
        if self.writer is None:
            return
        step = result['step']
        for n, value in result['recall_at_n'].items():
            self.writer.add_scalar(f'val/recall@{n}', value, step)
        self.writer.add_scalar('val/pr_auc', result['pr_auc'], step)
        for condition, scores in result['by_condition'].items():
            self.writer.add_scalar(f'val_{condition}/recall@1', scores['recall_at_n']['1'], step)


class RunArtifacts:
    """Paths of a run directory and the writes into it (only the main process writes)."""

    def __init__(self, out_dir: Union[str, Path], *, is_main: bool) -> None:
        self.root = Path(out_dir).expanduser().resolve()
        self.is_main = is_main
        self.recipe = self.root / 'recipe.yaml'
        self.checkpoint = self.root / 'checkpoints' / 'last.pt'
        self.best_weights = self.root / 'best_model.pt'
        self.weights = self.root / 'model.pt'
        self.preset = self.root / 'model.yaml'
        self.export_dir = self.root / 'export'
        self.summary = self.root / 'summary.json'
        self.losses = self.root / 'losses.json'

    def problem(self, *, resume: bool) -> Optional[str]:
        """Why the directory does not fit a fresh run (or a resume), or None if it does."""
        if resume and not self.checkpoint.is_file():
            return (f'nothing to resume: {self.checkpoint} does not exist; start the run '
                    'without --resume')
        if not resume and self.checkpoint.exists():
            return (f'{self.root} already holds a run ({self.checkpoint}); continue it with '
                    '--resume or choose another --out')
        return None

    def write_recipe(self, cfg: TrainConfig) -> None:
        """Write the recipe of a fresh run (main process)."""
        if self.is_main:
            atomic_write_text(self.recipe, yaml.safe_dump(to_dict(cfg), sort_keys=False))

    @contextlib.contextmanager
    def logger(self, run: Run) -> Iterator[RunLogger]:
        """Yield the run's :class:`RunLogger`; tensorboard resumes at the run's step."""
        writer = None
        if self.is_main:
            from torch.utils.tensorboard import SummaryWriter
            writer = SummaryWriter(log_dir=str(self.root / 'tensorboard'),
                                   purge_step=run.step or None)
        try:
            yield RunLogger(writer, self.is_main)
        finally:
            if writer is not None:
                writer.close()

    def save_best_weights(self, model: DescriptorModel) -> None:
        """Keep the current weights as the best so far."""
        _save_state(self.best_weights, model.state_dict())

    def finish(self, run: Run, *, replica_hashes: List[str], images_all_ranks: int,
               resumed_from_step: Optional[int] = None) -> Optional[Dict[str, Any]]:
        """Write final weights, preset, export and summary (main process); return the summary."""
        if not self.is_main:
            return None
        if self.best_weights.is_file() and run.history:
            run.model.load_state_dict(torch.load(self.best_weights, weights_only=True))
        config = model_config(run.cfg)
        _fit_whitening(run, config.whitening_dim)
        if pose_head(run.model) is not None:  # its positions are relative to the training mean
            set_pose_origin(run.model, run.data.builder.origin_m)
        _save_state(self.weights, run.model.state_dict())
        config = replace(config, name=run.cfg.name, checkpoint=str(self.weights))
        atomic_write_text(self.preset, yaml.safe_dump(to_dict(config), sort_keys=False))
        if run.cfg.export:
            card = make_model_card(config, run.model, weights_file=str(self.weights))
            export_onnx(run.model.eval(), card, self.export_dir)
        summary = dict(self._summary(run, replica_hashes, images_all_ranks),
                       resumed_from_step=resumed_from_step)
        atomic_write_text(self.losses, json.dumps({'total': run.losses, 'parts': run.loss_parts}))
        atomic_write_text(self.summary, json.dumps(json_safe(summary), indent=2))
        return summary

    def _summary(self, run: Run, replica_hashes: List[str],
                 images_all_ranks: int) -> Dict[str, Any]:
        seconds = max(run.train_seconds, 1e-9)
        return {
            'name': run.cfg.name, 'model': run.cfg.model, 'steps': run.step,
            'epochs': run.cfg.epochs, 'world_size': run.context.world_size,
            'device': str(run.context.device), 'mixed_precision': run.amp,
            'train_seconds': run.train_seconds,
            'images_per_second': images_all_ranks / seconds,
            'loss_first_10': float(np.mean(run.losses[:10])) if run.losses else None,
            'loss_last_10': float(np.mean(run.losses[-10:])) if run.losses else None,
            'validation': run.history, 'best': run.best,
            'replica_weights_sha256': replica_hashes,
            'data': run.data.description,
            'outputs': {'weights': str(self.weights), 'preset': str(self.preset),
                        'losses': str(self.losses),
                        'export': str(self.export_dir) if run.cfg.export else None,
                        'tensorboard': str(self.root / 'tensorboard')},
            'finished_unix_s': time.time()}


def _save_state(path: Path, state: Dict[str, Any]) -> None:
    with atomic_path(path) as temporary:
        torch.save(state, temporary)


def _fit_whitening(run: Run, whitening_dim: int) -> None:
    """Append PCA-whitening fitted on training descriptors when the preset asks for it."""
    if not whitening_dim:
        return
    rows = np.arange(min(len(run.data.images), WHITENING_SAMPLES))
    descriptors = embed_rows(run.model, run.data.images, device=run.context.device, rows=rows)
    whitening = PCAWhitening(in_dim=descriptors.shape[1], out_dim=whitening_dim)
    run.model.whitening = whitening.fit(descriptors).to(run.context.device)
    LOGGER.info('fitted PCA-whitening %d -> %d on %d training descriptors',
                descriptors.shape[1], whitening_dim, len(rows))
