"""VGG16 trunk (torchvision, no BatchNorm) tapping ``conv3_2``, ``conv4_3`` and ``conv5_3``.

Simonyan and Zisserman, "Very Deep Convolutional Networks for Large-Scale Image
Recognition", ICLR 2015: stacks of 3x3 convolutions + ReLU (two 3x3 layers see
a 5x5 field, three a 7x7 one, with fewer weights), each block closed by 2x2 max
pooling. Taps are taken after their ReLU: ``conv3_2`` (256 channels, stride 4),
``conv4_3`` (512, stride 8) and ``conv5_3`` (512, stride 16; the last pooling is
not built), the three levels of the hierarchical attention fusion model.
"""

from torch import nn
import torchvision
from torchvision.models import vgg as torchvision_vgg

from vl_attention.models.backbone_utils import IMAGENET_NORMALIZATION, \
    load_torchvision_weights, Stage, StagedBackbone
from vl_attention.models.registry import BACKBONES

IMAGENET_WEIGHTS = torchvision.models.VGG16_Weights.IMAGENET1K_V1
# (tap, index one past its ReLU in torchvision's vgg16().features, channels)
TAPS = (('conv3_2', 14, 256), ('conv4_3', 23, 512), ('conv5_3', 30, 512))


@BACKBONES.register('vgg16')
class VGG16(StagedBackbone):
    """torchvision VGG16 convolutional part; taps ``conv3_2``, ``conv4_3``, ``conv5_3``.

    ``weights``: ``'imagenet'`` (torchvision's file in the torch hub cache,
    never downloaded here), ``'none'`` or a ``.pth`` state dict of torchvision's
    ``vgg16`` (its classifier tensors are ignored). ``freeze``: False, True or a tap.
    ``truncate_after``: a tap.
    """

    normalization = IMAGENET_NORMALIZATION
    default_tap = 'conv5_3'

    def __init__(self, *, weights='imagenet', freeze=False, truncate_after=None):
        super().__init__()
        net = _vgg16_without_classifier()
        load_torchvision_weights(net, weights, arch='vgg16', weights_enum=IMAGENET_WEIGHTS,
                                 label='VGG16', unused_prefixes=('classifier.',))
        stages, start = [], 0
        for tap, end, channels in TAPS:
            stages.append(Stage(tap, net.features[start:end], tap, channels))
            start = end
        self._use_stages(stages, truncate_after=truncate_after, freeze=freeze)


def _vgg16_without_classifier():
    # torchvision's vgg16 also builds (and randomly initialises) a 120M-parameter classifier
    # that no tap uses; build its ``features`` alone, initialised the way torchvision does.
    net = nn.Module()
    net.features = torchvision_vgg.make_layers(torchvision_vgg.cfgs['D'], batch_norm=False)
    for module in net.features.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode='fan_out', nonlinearity='relu')
            nn.init.constant_(module.bias, 0)
    return net
