"""GoogLeNet (Inception v1) trunk (torchvision) tapping ``inception3b``, ``4e`` and ``5b``.

Szegedy et al., "Going Deeper with Convolutions", CVPR 2015: each Inception
module concatenates, along channels, parallel 1x1, 1x1->3x3, 1x1->3x3 (5x5 in
the paper) and 3x3-max-pool->1x1 branches, the 1x1 convolutions reducing
width first. Taps: ``inception3b`` (480 channels, stride 8), ``inception4e``
(832, stride 16) and ``inception5b`` (1024, stride 32). The auxiliary
classifiers are not built.

torchvision's ImageNet GoogLeNet weights expect inputs scaled to [-1, 1]
(torchvision's ``transform_input=True`` converts ImageNet-normalised input to
that). This trunk is built with ``transform_input=False`` and declares
mean = std = 0.5 instead: the same computation, done once in preprocessing.
"""

from collections import OrderedDict

from torch import nn
import torchvision

from vl_attention.engine.preprocess import Normalization
from vl_attention.models.backbone_utils import load_torchvision_weights, Stage, StagedBackbone
from vl_attention.models.registry import BACKBONES

IMAGENET_WEIGHTS = torchvision.models.GoogLeNet_Weights.IMAGENET1K_V1
STAGE_LAYERS = (
    ('inception3b', 480, ('conv1', 'maxpool1', 'conv2', 'conv3', 'maxpool2', 'inception3a',
                          'inception3b')),
    ('inception4e', 832, ('maxpool3', 'inception4a', 'inception4b', 'inception4c',
                          'inception4d', 'inception4e')),
    ('inception5b', 1024, ('maxpool4', 'inception5a', 'inception5b')),
)


@BACKBONES.register('googlenet')
class GoogLeNet(StagedBackbone):
    """torchvision GoogLeNet without auxiliary heads, pooling and classifier.

    ``weights``: ``'imagenet'`` (torchvision's file in the torch hub cache,
    never downloaded here), ``'none'`` or a ``.pth`` state dict of
    torchvision's ``googlenet`` (auxiliary-classifier tensors are ignored).
    ``freeze``: False, True or a tap. ``truncate_after``: a tap.
    """

    normalization = Normalization(mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5),
                                  interpolation='bilinear')
    default_tap = 'inception5b'

    def __init__(self, *, weights='imagenet', freeze=False, truncate_after=None):
        super().__init__()
        net = torchvision.models.googlenet(weights=None, aux_logits=False,
                                           transform_input=False, init_weights=True)
        load_torchvision_weights(net, weights, arch='googlenet', weights_enum=IMAGENET_WEIGHTS,
                                 label='GoogLeNet', unused_prefixes=('aux1.', 'aux2.', 'fc.'))
        stages = [Stage(tap, nn.Sequential(OrderedDict(
                      (layer, getattr(net, layer)) for layer in layers)), tap, channels)
                  for tap, channels, layers in STAGE_LAYERS]
        self._use_stages(stages, truncate_after=truncate_after, freeze=freeze)
