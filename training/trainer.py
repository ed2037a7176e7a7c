"""A small, deterministic training loop and the held-out evaluation it is judged by.

:func:`train_steps` runs Adam for a fixed number of steps on batches of
several views per place and returns the per-step losses. Parts of the model
whose parameters are all frozen run in eval mode (frozen BatchNorm statistics,
no dropout); when the whole backbone is frozen its feature maps are computed
once for the training set and reused, so a step costs only the head, which
makes training heads on a frozen trunk on a CPU practical.

:func:`evaluate_recall_at_1` embeds a held-out database and query set and
scores nearest-neighbour retrieval with the evaluation package's
:func:`~vl_attention.evaluation.metrics.recall_at_n`; :func:`evaluate_pose`
scores a pose-regressing model with its :func:`pose_errors`.
"""

from dataclasses import dataclass, field
import logging

import numpy as np
import torch

from vl_attention.config import ConfigError
from vl_attention.evaluation.metrics import recall_at_n
from vl_attention.models.modes import evaluating
from vl_attention.models.pose_attention import pose_errors_from_poses
from vl_attention.training.config import OptimizerConfig

LOGGER = logging.getLogger(__name__)


@dataclass
class TrainingHistory:
    """Per-step total loss and named loss parts."""

    losses: list = field(default_factory=list)
    parts: dict = field(default_factory=dict)

    def record(self, total, parts):
        """Append one step."""
        self.losses.append(float(total))
        for name, value in parts.items():
            self.parts.setdefault(name, []).append(float(value))

    def window_mean(self, first=None, last=None):
        """Mean loss of the first or the last ``n`` steps."""
        window = self.losses[:first] if first is not None else self.losses[-last:]
        return float(np.mean(window))


def backbone_is_frozen(model):
    """Whether no backbone parameter takes gradients."""
    return not any(parameter.requires_grad for parameter in model.backbone.parameters())


def has_frozen_stages(model):
    """Whether the backbone's first stages take no gradients (their features can be cached)."""
    return bool(model.backbone.frozen_tap)


def set_training_mode(model):
    """``model.train()``, but modules whose parameters are all frozen stay in eval mode."""
    model.train()
    for module in model.modules():
        parameters = list(module.parameters())
        if parameters and not any(parameter.requires_grad for parameter in parameters):
            module.eval()


@torch.no_grad()
def cache_backbone_features(model, images, *, batch_size=32, device=None):
    """Features ``{tap: (N, C, h, w)}`` of the backbone's frozen stages (eval mode), all images.

    The model's taps among them, and the last frozen stage's output when later
    stages train (:func:`outputs_from_cache` runs those). ``images`` is an
    ``(N, 3, H, W)`` tensor or anything sliceable like one
    (:class:`~vl_attention.training.sampling.ImageRows`).
    """
    backbone = model.backbone
    keep = set(model.taps) | ({backbone.frozen_tap} if not backbone_is_frozen(model) else set())
    with evaluating(backbone):
        chunks = [backbone.frozen_features(images[start:start + batch_size].to(device))
                  for start in range(0, len(images), batch_size)]
    return {tap: torch.cat([chunk[tap] for chunk in chunks]) for tap in chunks[0] if tap in keep}


def outputs_from_cache(model, features, images):
    """Model outputs of ``images`` from their cached frozen-stage ``features``."""
    return model.outputs_from_features(model.backbone.forward_from_frozen(features), images)


def make_optimizer(config, model, loss):
    """Create the optimiser an :class:`OptimizerConfig` names over what model and loss train.

    Trainable backbone parameters form a second group at ``lr x backbone_lr_scale``.
    """
    trunk = [p for p in model.backbone.parameters() if p.requires_grad]
    in_trunk = {id(p) for p in trunk}
    head = [p for module in (model, loss) for p in module.parameters()
            if p.requires_grad and id(p) not in in_trunk]
    if not head and not trunk:
        raise ConfigError('nothing to train: every parameter of the model and the loss is '
                          'frozen; unfreeze the head (or part of the backbone)')
    groups = [group for group in (
        {'params': head}, {'params': trunk, 'lr': config.lr * config.backbone_lr_scale})
        if group['params']]
    if config.name == 'sgd':
        return torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum,
                               weight_decay=config.weight_decay)
    optimizer = torch.optim.AdamW if config.name == 'adamw' else torch.optim.Adam
    return optimizer(groups, lr=config.lr, weight_decay=config.weight_decay)


def train_steps(model, dataset, *, loss, steps, batch_size, lr, seed, weight_decay=0.0,
                max_grad_norm=None, cache_features=True, log_every=50):
    """Train ``model`` for ``steps`` Adam steps on ``dataset``; return the TrainingHistory.

    ``dataset`` is a :class:`~vl_attention.training.datasets.TrainingSet`,
    ``loss`` a module from :data:`~vl_attention.training.losses.LOSSES`.
    With ``seed`` fixed, the batches, the mining and the result are repeatable.
    ``cache_features`` reuses a frozen backbone's features across steps.
    """
    if steps < 1:
        raise ValueError(f'steps={steps} must be >= 1')
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    optimizer = make_optimizer(OptimizerConfig(lr=lr, weight_decay=weight_decay), model, loss)
    cache = None
    if cache_features and has_frozen_stages(model):
        cache = cache_backbone_features(model, dataset.images)
    set_training_mode(model)
    loss.train()
    history = TrainingHistory()
    for step in range(steps):
        batch = dataset.batch(dataset.sample_indices(batch_size, generator))
        if cache is None:
            output = model.outputs(batch.images)
        else:
            rows = {tap: value[batch.indices] for tap, value in cache.items()}
            output = outputs_from_cache(model, rows, batch.images)
        total, parts = loss(output, batch)
        optimizer.zero_grad(set_to_none=True)
        total.backward()
        if max_grad_norm is not None:
            torch.nn.utils.clip_grad_norm_(
                [p for group in optimizer.param_groups for p in group['params']], max_grad_norm)
        optimizer.step()
        history.record(total.detach(), parts)
        if log_every and (step + 1) % log_every == 0:
            LOGGER.info('step %d/%d loss %.4f', step + 1, steps, history.losses[-1])
    model.eval()
    return history


@torch.no_grad()
def predict(model, images, *, batch_size=32):
    """Return descriptors and poses (or None) of all images as arrays, in eval mode."""
    with evaluating(model):
        outputs = [model.outputs(images[start:start + batch_size])
                   for start in range(0, len(images), batch_size)]
    descriptors = torch.cat([output.descriptor for output in outputs]).numpy()
    poses = None
    if outputs and outputs[0].pose is not None:
        poses = torch.cat([output.pose for output in outputs]).numpy()
    return descriptors, poses


def evaluate_recall_at_1(model, database, queries, *, batch_size=32):
    """Recall@1 of the queries against the database (nearest descriptor by inner product).

    Both are TrainingSets with positions in the same frame; a database image is
    a positive of a query within the database's ``positive_distance_m``.
    """
    database_descriptors, _ = predict(model, database.images, batch_size=batch_size)
    query_descriptors, _ = predict(model, queries.images, batch_size=batch_size)
    ranked = np.argsort(-query_descriptors @ database_descriptors.T, axis=1, kind='stable')
    distance_m = torch.cdist(queries.positions_m.double(), database.positions_m.double())
    positives = [np.flatnonzero(row <= database.positive_distance_m)
                 for row in distance_m.numpy()]
    recalls, without_positive = recall_at_n(ranked, positives, n_values=(1,))
    if without_positive:
        LOGGER.warning('%d queries have no database image within %.1f m', without_positive,
                       database.positive_distance_m)
    return recalls[1]


def evaluate_pose(model, views, *, batch_size=32):
    """Position errors (m) and rotation errors (deg) of a pose-regressing model on views."""
    _, poses = predict(model, views.images, batch_size=batch_size)
    if poses is None:
        raise ValueError('the model returns no pose; evaluate_pose needs a pose-regressing model')
    return pose_errors_from_poses(poses, views.poses)
