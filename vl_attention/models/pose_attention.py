"""Joint spatial and layer attention with an RNN for 6-DoF camera pose regression.

Joseph, Derpanis & Qureshi, "Joint Spatial and Layer Attention for
Convolutional Networks", BMVC 2019. L backbone layers are projected by 1x1
convolutions to a common width d and average-pooled to the coarsest layer's
grid. A recurrent cell (LSTM or GRU) runs T steps; at step t, from the
previous hidden state h:

* layer attention ("what"): beta_t = softmax over layers l of
  v_L . tanh(W_L g_l + U_L h), with g_l the spatial mean of layer l;
* the layer-fused map is F_t = sum_l beta_t,l P_l;
* spatial attention ("where"): alpha_t = softmax over positions i of
  v_S . tanh(W_S F_t,i + U_S h);
* the context c_t = sum_i alpha_t,i F_t,i is the cell's next input.

The final hidden state and the T contexts regress the position (3) and the
unit quaternion (w, x, y, z; w >= 0), an optional class, and the global
descriptor (an L2-normalised projection).

The head regresses positions relative to the training set's mean position
(small targets); ``pose_origin_m``, a float64 buffer saved with the weights,
records that mean so the pose is known in the map frame of the training data.
:class:`PoseOutputs` is what the ONNX export traces for a pose model: the
descriptor, the position relative to ``pose_origin_m`` and the orientation
as ``(x, y, z, w)`` with ``w >= 0``; the origin is added after the network, in
float64, because FP16 engines cannot hold map coordinates.

The pose loss is the learnable-weight loss of Kendall, Grimes & Cipolla,
"Geometric loss functions for camera pose regression with deep learning",
CVPR 2017: L = L_x exp(-s_x) + s_x + L_q exp(-s_q) + s_q, with
L_x = ||x - x_hat||_1 and L_q = ||q - q_hat / ||q_hat|| ||_1.
"""

import numpy as np
import torch
from torch import nn
import torch.nn.functional as F

from vl_attention.geo import rotation_angle_deg
from vl_attention.model_outputs import (ORIENTATION_OUTPUT, POSE_FRAME,  # noqa: F401
                                        POSITION_OUTPUT)
from vl_attention.models.outputs import ModelOutput
from vl_attention.models.registry import AGGREGATORS

CELLS = {'lstm': nn.LSTMCell, 'gru': nn.GRUCell}
POSE_ORIGIN_KEY = 'pose_origin_m'
# columns (x, y, z, w) of a (B, 7) ModelOutput.pose = position + (w, x, y, z): geo's order
POSE_XYZW_COLUMNS = (4, 5, 6, 3)


class AdditiveAttention(nn.Module):
    """Scores ``v . tanh(W k + U h)`` of keys ``k`` against a query ``h`` (Bahdanau et al. 2015).

    The score layer has no bias: softmax ignores a constant, so its gradient
    would always be zero.
    """

    def __init__(self, *, key_dim, query_dim, attention_dim):
        super().__init__()
        self.key = nn.Linear(key_dim, attention_dim)
        self.query = nn.Linear(query_dim, attention_dim, bias=False)
        self.score = nn.Linear(attention_dim, 1, bias=False)

    def scores(self, projected_keys, query):
        """Scores ``(B, N)`` of already projected keys ``(B, N, A)`` for a query ``(B, Q)``."""
        return self.score(torch.tanh(projected_keys + self.query(query)[:, None])).squeeze(-1)


@AGGREGATORS.register('pose_attention')
class PoseAttention(nn.Module):
    """Recurrent joint layer + spatial attention head: descriptor, 6-DoF pose and class logits.

    Built with ``in_channels = {tap: C}``; called with ``{tap: (B, C, H, W)}``.
    Returns a :class:`ModelOutput` with ``pose`` ``(B, 7)``, ``logits``
    (``n_classes > 0``) and attention ``layer_weights`` ``(B, T, L)`` and
    ``spatial`` ``(B, T, h, w)``; ``extras['contexts']`` holds the attended
    contexts ``(B, T, d)``.
    """

    multi_level = True
    # The pooling bins onto the coarsest grid are traced as constants for the export size.
    fixed_input_size = True

    def __init__(self, *, in_channels, width=256, hidden_size=256, attention_dim=128,
                 cell='lstm', steps=4, n_classes=0, descriptor_dim=256):
        super().__init__()
        _check_options(in_channels, cell=cell, steps=steps, n_classes=n_classes,
                       sizes={'width': width, 'hidden_size': hidden_size,
                              'attention_dim': attention_dim, 'descriptor_dim': descriptor_dim})
        self.taps = tuple(in_channels)
        self.steps, self.cell_type = int(steps), cell
        self.projections = nn.ModuleList(nn.Conv2d(channels, width, kernel_size=1)
                                         for channels in in_channels.values())
        self.layer_attention = AdditiveAttention(key_dim=width, query_dim=hidden_size,
                                                 attention_dim=attention_dim)
        self.spatial_attention = AdditiveAttention(key_dim=width, query_dim=hidden_size,
                                                   attention_dim=attention_dim)
        state_parts = 2 if cell == 'lstm' else 1
        self.initial_state = nn.Linear(width, state_parts * hidden_size)
        self.rnn = CELLS[cell](width, hidden_size)
        summary_dim = hidden_size + self.steps * width
        self.position = nn.Linear(summary_dim, 3)
        self.orientation = nn.Linear(summary_dim, 4)
        self.descriptor = nn.Linear(summary_dim, descriptor_dim)
        self.classifier = nn.Linear(summary_dim, n_classes) if n_classes else None
        _start_at_identity_rotation(self.orientation)
        # Map-frame position of the regression's zero (the training set's mean position).
        self.register_buffer(POSE_ORIGIN_KEY, torch.zeros(3, dtype=torch.float64))

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # Weights saved before the origin existed regress map-frame positions: origin zero.
        state_dict.setdefault(prefix + POSE_ORIGIN_KEY, torch.zeros(3, dtype=torch.float64))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def forward(self, features: dict[str, torch.Tensor]) -> ModelOutput:
        """Attend over ``{tap: (B, C, H, W)}`` for T steps; return a :class:`ModelOutput`."""
        layers = self._project(features)                       # (B, L, d, h, w)
        positions = layers.flatten(3).transpose(2, 3)          # (B, L, hw, d)
        hidden, contexts, layer_weights, spatial_weights = self._attend(positions)
        grid = (layers.shape[0], self.steps, layers.shape[-2], layers.shape[-1])
        return self._outputs(hidden, torch.stack(contexts, dim=1),
                             torch.stack(layer_weights, dim=1),
                             torch.stack(spatial_weights, dim=1).reshape(grid))

    def _attend(self, positions):
        summaries = positions.mean(dim=2)                      # (B, L, d)
        # W_S is linear and the layer weights sum to 1, so projecting each layer
        # once and mixing the projections equals projecting every fused map.
        layer_keys = self.layer_attention.key(summaries)
        spatial_keys = self.spatial_attention.key(positions)
        state = self._initial_state(summaries.mean(dim=1))
        contexts, layer_weights, spatial_weights = [], [], []
        for _ in range(self.steps):
            hidden = state[0] if isinstance(state, tuple) else state
            beta = self.layer_attention.scores(layer_keys, hidden).softmax(dim=-1)
            fused = torch.einsum('bl,blnd->bnd', beta, positions)
            fused_keys = torch.einsum('bl,blna->bna', beta, spatial_keys)
            alpha = self.spatial_attention.scores(fused_keys, hidden).softmax(dim=-1)
            contexts.append(torch.einsum('bn,bnd->bd', alpha, fused))
            state = self.rnn(contexts[-1], state)
            layer_weights.append(beta)
            spatial_weights.append(alpha)
        hidden = state[0] if isinstance(state, tuple) else state
        return hidden, contexts, layer_weights, spatial_weights

    def _project(self, features):
        missing = [tap for tap in self.taps if tap not in features]
        if missing:
            raise ValueError(f'pose_attention expects feature maps {list(self.taps)}, '
                             f'missing {missing}')
        maps = [features[tap] for tap in self.taps]
        height = min(int(feature.shape[-2]) for feature in maps)
        width = min(int(feature.shape[-1]) for feature in maps)
        # Averaging commutes with the 1x1 projections; pooling first is cheaper.
        return torch.stack([projection(adaptive_average_pool(feature, height, width))
                            for feature, projection in zip(maps, self.projections)], dim=1)

    def _initial_state(self, mean_summary):
        # Show, Attend and Tell (Xu et al., ICML 2015): start the RNN from the
        # image's mean feature, so the first layer choice already sees the image.
        state = torch.tanh(self.initial_state(mean_summary))
        if self.cell_type == 'lstm':
            hidden, memory = state.chunk(2, dim=-1)
            return hidden, memory
        return state

    def _outputs(self, hidden, contexts, layer_weights, spatial_weights):
        summary = torch.cat([hidden, contexts.flatten(1)], dim=-1)
        quaternion = F.normalize(self.orientation(summary), p=2, dim=-1)
        quaternion = torch.where(quaternion[:, :1] < 0, -quaternion, quaternion)
        pose = torch.cat([self.position(summary), quaternion], dim=-1)
        logits = self.classifier(summary) if self.classifier is not None else None
        return ModelOutput(descriptor=F.normalize(self.descriptor(summary), p=2, dim=-1),
                           attention={'layer_weights': layer_weights,
                                      'spatial': spatial_weights},
                           pose=pose, logits=logits, extras={'contexts': contexts})


def pose_head(model):
    """Return the :class:`PoseAttention` head of a descriptor model (``None``: none)."""
    head = getattr(model, 'aggregator', None)
    return head if isinstance(head, PoseAttention) else None


def pose_origin_m(model):
    """``float64 (3,)`` map-frame position of the model's regression zero."""
    head = _require_pose_head(model)
    return head.pose_origin_m.detach().cpu().double().numpy().copy()


def set_pose_origin(model, origin_m):
    """Record the map-frame origin the head's positions are relative to (after training).

    Training regresses positions relative to the training set's mean position
    (``TrainingSet.origin_m``); set that mean here before saving or exporting.
    """
    head = _require_pose_head(model)
    origin = torch.as_tensor(np.asarray(origin_m, np.float64).reshape(-1))
    if origin.shape != (3,) or not bool(torch.isfinite(origin).all()):
        raise ValueError(f'pose origin must be 3 finite metres (x, y, z), got {origin_m!r}')
    with torch.no_grad():
        head.pose_origin_m.copy_(origin)
    return model


def _require_pose_head(model):
    head = pose_head(model)
    if head is None:
        raise ValueError(f'{type(model).__name__} has no pose_attention head; only '
                         'pose_attention presets regress a pose')
    return head


class PoseOutputs(nn.Module):
    """Export view of a pose model: images -> (descriptors, position_m, orientation_xyzw).

    ``position_m`` ``(B, 3)`` is relative to the head's ``pose_origin_m`` (add
    it in float64); ``orientation_xyzw`` ``(B, 4)`` is unit with ``w >= 0``.
    """

    def __init__(self, model):
        super().__init__()
        _require_pose_head(model)
        self.model = model

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Descriptor, relative position and (x, y, z, w) orientation of a normalised batch."""
        output = self.model.outputs(images)
        return output.descriptor, output.pose[:, :3], output.pose[:, list(POSE_XYZW_COLUMNS)]


def _check_options(in_channels, *, cell, steps, n_classes, sizes):
    if not isinstance(in_channels, dict) or not in_channels:
        raise ValueError('pose_attention is a multi-level head: in_channels must be a non-empty '
                         f'{{tap: channels}} mapping (list the taps in the preset), '
                         f'got {in_channels!r}')
    if cell not in CELLS:
        raise ValueError(f'pose_attention cell must be one of {sorted(CELLS)}, got {cell!r}')
    if int(steps) < 1:
        raise ValueError(f'pose_attention needs steps >= 1, got {steps}')
    if int(n_classes) < 0:
        raise ValueError(f'n_classes must be >= 0 (0: no classification head), got {n_classes}')
    for name, size in sizes.items():
        if int(size) < 1:
            raise ValueError(f'pose_attention option {name} must be >= 1, got {size}')


def _start_at_identity_rotation(orientation):
    # Untrained, the head predicts the identity rotation (w = 1), not a random one.
    with torch.no_grad():
        orientation.weight.mul_(0.1)
        orientation.bias.copy_(torch.tensor([1.0, 0.0, 0.0, 0.0]))


def adaptive_average_pool(features, height, width):
    """Adaptive average pooling of ``(B, C, H, W)`` to ``(height, width)`` as two matmuls.

    Equals ``F.adaptive_avg_pool2d`` (same bins) but exports to ONNX at any
    input size, also where H is not a multiple of ``height``.
    """
    rows = _pooling_matrix(int(features.shape[-2]), height, features)
    columns = _pooling_matrix(int(features.shape[-1]), width, features)
    return torch.einsum('ih,bchw,jw->bcij', rows, features, columns)


def _pooling_matrix(in_size, out_size, like):
    index = torch.arange(out_size)
    start = (index * in_size) // out_size
    end = ((index + 1) * in_size + out_size - 1) // out_size
    position = torch.arange(in_size)
    inside = (position[None] >= start[:, None]) & (position[None] < end[:, None])
    return (inside.float() / (end - start)[:, None].float()).to(like)


class PoseLoss(nn.Module):
    """Learnable-weight pose loss of Kendall, Grimes & Cipolla (CVPR 2017).

    ``L = L_x exp(-s_x) + s_x + L_q exp(-s_q) + s_q`` over batch-mean L1
    errors; ``s_x``, ``s_q`` (log-variances, the learned replacement of
    PoseNet's weight beta) start at ``beta_init`` (paper: 0 and -3) and are
    trained with the network when ``learn_weights`` (else kept fixed). The
    quaternion error is the smaller of those to ``q`` and ``-q``, which are
    the same rotation.
    """

    def __init__(self, *, learn_weights=True, beta_init=(0.0, -3.0)):
        super().__init__()
        if len(beta_init) != 2:
            raise ValueError(f'beta_init is (s_x, s_q), two numbers; got {beta_init!r}')
        self.s_x = nn.Parameter(torch.tensor(float(beta_init[0])), requires_grad=learn_weights)
        self.s_q = nn.Parameter(torch.tensor(float(beta_init[1])), requires_grad=learn_weights)

    def forward(self, predicted_pose: torch.Tensor, true_pose: torch.Tensor) -> torch.Tensor:
        """Loss of predicted ``(B, 7)`` poses (xyz + wxyz) against true ones."""
        position_l1, rotation_l1 = pose_loss_terms(predicted_pose, true_pose)
        return (position_l1 * torch.exp(-self.s_x) + self.s_x
                + rotation_l1 * torch.exp(-self.s_q) + self.s_q)


def pose_loss_terms(predicted_pose, true_pose):
    """Batch-mean L1 position error and sign-invariant L1 unit-quaternion error."""
    _check_pose_pair(predicted_pose, true_pose)
    position_l1 = (predicted_pose[:, :3] - true_pose[:, :3]).abs().sum(dim=-1)
    predicted_q = F.normalize(predicted_pose[:, 3:], p=2, dim=-1)
    true_q = true_pose[:, 3:]
    rotation_l1 = torch.minimum((true_q - predicted_q).abs().sum(dim=-1),
                                (true_q + predicted_q).abs().sum(dim=-1))
    return position_l1.mean(), rotation_l1.mean()


def _check_pose_pair(predicted_pose, true_pose):
    if predicted_pose.ndim != 2 or predicted_pose.shape[-1] != 7 \
            or predicted_pose.shape != true_pose.shape:
        raise ValueError('poses must both be (B, 7) = position xyz + quaternion wxyz; got '
                         f'{tuple(predicted_pose.shape)} and {tuple(true_pose.shape)}')


def pose_errors_from_poses(predicted_pose, true_pose):
    """Per-image ``(position_error_m, rotation_error_deg)`` of ``(B, 7)`` xyz + wxyz poses.

    Reorders the quaternions to the (x, y, z, w) of :mod:`vl_attention.geo`
    and measures the rotation with :func:`vl_attention.geo.rotation_angle_deg`,
    as :func:`vl_attention.evaluation.metrics.pose_errors` does (models sit below
    evaluation, so they do not import it).
    """
    predicted = torch.as_tensor(predicted_pose).detach().cpu().double()
    true = torch.as_tensor(true_pose).detach().cpu().double()
    _check_pose_pair(predicted, true)
    xyzw = list(POSE_XYZW_COLUMNS)
    position_m = np.linalg.norm(predicted[:, :3].numpy() - true[:, :3].numpy(), axis=-1)
    rotation_deg = np.asarray(rotation_angle_deg(predicted[:, xyzw].numpy(),
                                                 true[:, xyzw].numpy()))
    return position_m, rotation_deg
