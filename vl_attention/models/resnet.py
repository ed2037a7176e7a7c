"""ResNet-18/50/101 trunks (torchvision) tapping ``layer1`` .. ``layer4``.

He, Zhang, Ren and Sun, "Deep Residual Learning for Image Recognition", CVPR
2016: each block learns a residual, y = F(x, {W_i}) + x (a projection of x when
the shape changes), so deep stacks train; four stages of blocks at strides 4,
8, 16 and 32 (``layer1`` .. ``layer4``). The VPR heads comparison layout (a
ResNet-18 truncated before its last block) is ``truncate_after: layer3``.
"""

from torch import nn
import torchvision

from vl_attention.models.backbone_utils import frozen_linear, IMAGENET_NORMALIZATION, \
    load_torchvision_weights, Stage, StagedBackbone, torchvision_state_dict, \
    torchvision_weight_file
from vl_attention.models.registry import BACKBONES
from vl_attention.models.weights import WeightsError

TAPS = ('layer1', 'layer2', 'layer3', 'layer4')


class ResNetTrunk(StagedBackbone):
    """torchvision ResNet without pooling and classifier; taps ``layer1`` .. ``layer4``.

    ``weights``: ``'imagenet'`` reads torchvision's file from the torch hub
    cache (never downloaded here), ``'none'`` random, or a ``.pth`` state dict
    of the torchvision net. ``freeze``: False, True (whole trunk) or a tap
    (that stage and every stage before it, the stem included).
    ``truncate_after``: the deepest tap built (default ``layer4``).
    """

    normalization = IMAGENET_NORMALIZATION
    default_tap = 'layer4'
    arch = ''
    weights_enum = None
    channels = ()

    def __init__(self, *, weights='imagenet', freeze=False, truncate_after=None):
        super().__init__()
        net = getattr(torchvision.models, self.arch)(weights=None)
        load_torchvision_weights(net, weights, arch=self.arch, weights_enum=self.weights_enum,
                                 label=self.label(), unused_prefixes=('fc.',))
        self._weights = weights
        stem = nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool)
        stages = [Stage('stem', stem)] + [
            Stage(tap, getattr(net, tap), tap, channels)
            for tap, channels in zip(TAPS, self.channels)]
        self._use_stages(stages, truncate_after=truncate_after, freeze=freeze)

    def imagenet_classifier(self):
        """Return the ImageNet ``fc`` of these weights (over the pooled ``layer4``), frozen."""
        state = torchvision_state_dict(self._weights, arch=self.arch,
                                       weights_enum=self.weights_enum, label=self.label())
        if state is None or 'fc.weight' not in state or 'fc.bias' not in state:
            raise WeightsError(f'{self.label()} weights {self._weights!r} have no ImageNet '
                               'classifier (fc.weight, fc.bias); use weights: imagenet or a '
                               '.pth of the whole torchvision net')
        return frozen_linear(state['fc.weight'], state['fc.bias'])

    @classmethod
    def label(cls):
        """Human name of the network, for messages."""
        return cls.arch.replace('resnet', 'ResNet-')

    @classmethod
    def imagenet_weight_file(cls):
        """Where torchvision keeps this network's ImageNet file (the torch hub cache)."""
        return torchvision_weight_file(cls.weights_enum)


@BACKBONES.register('resnet18')
class ResNet18(ResNetTrunk):
    """ResNet-18: basic blocks; taps 64/128/256/512 channels at strides 4/8/16/32."""

    arch = 'resnet18'
    weights_enum = torchvision.models.ResNet18_Weights.IMAGENET1K_V1
    channels = (64, 128, 256, 512)


@BACKBONES.register('resnet50')
class ResNet50(ResNetTrunk):
    """ResNet-50: bottleneck blocks; taps 256/512/1024/2048 channels at strides 4/8/16/32."""

    arch = 'resnet50'
    weights_enum = torchvision.models.ResNet50_Weights.IMAGENET1K_V1
    channels = (256, 512, 1024, 2048)


@BACKBONES.register('resnet101')
class ResNet101(ResNetTrunk):
    """ResNet-101: bottleneck blocks; taps 256/512/1024/2048 channels at strides 4/8/16/32."""

    arch = 'resnet101'
    weights_enum = torchvision.models.ResNet101_Weights.IMAGENET1K_V1
    channels = (256, 512, 1024, 2048)
