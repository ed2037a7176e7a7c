"""ResNet-50 trunk (torchvision) tapping layer3 and layer4: the heavy benchmark backbone."""

from pathlib import Path

import torch
from torch import nn
import torchvision

from vl_attention.engine.preprocess import Normalization
from vl_attention.models.registry import BACKBONES
from vl_attention.models.weights import read_state_dict, WeightsError

IMAGENET_WEIGHTS = torchvision.models.ResNet50_Weights.IMAGENET1K_V1


def imagenet_weight_file():
    """Where torchvision keeps its ImageNet ResNet-50 file (the torch hub cache)."""
    return Path(torch.hub.get_dir()) / 'checkpoints' / Path(IMAGENET_WEIGHTS.url).name


@BACKBONES.register('resnet50')
class ResNet50(nn.Module):
    """torchvision ResNet-50 without its classifier; taps ``layer3`` (1024) and ``layer4`` (2048).

    ``weights``: ``'imagenet'`` reads torchvision's file from the torch hub
    cache (it is never downloaded here), ``'none'`` random, or a ``.pth``
    state dict of torchvision's ``resnet50``.
    """

    normalization = Normalization(mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225),
                                  interpolation='bilinear')
    default_tap = 'layer4'

    def __init__(self, *, weights='imagenet', freeze=False):
        super().__init__()
        net = torchvision.models.resnet50(weights=None)
        _load_resnet50_weights(net, weights)
        self.stem = nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool)
        self.layer1, self.layer2 = net.layer1, net.layer2
        self.layer3, self.layer4 = net.layer3, net.layer4
        self.out_channels = {'layer3': 1024, 'layer4': 2048}
        if freeze:
            self.requires_grad_(False)

    def forward(self, images):
        """Return the stride-16 and stride-32 feature maps."""
        layer3 = self.layer3(self.layer2(self.layer1(self.stem(images))))
        return {'layer3': layer3, 'layer4': self.layer4(layer3)}


def _load_resnet50_weights(net, weights):
    if weights == 'none':
        return
    if weights == 'imagenet':
        path = imagenet_weight_file()
        if not path.is_file():
            raise WeightsError(
                f'ImageNet ResNet-50 weights are not at {path}; they need internet once: '
                f'python -c "import torchvision; torchvision.models.resnet50('
                f'weights=\'{IMAGENET_WEIGHTS}\')", or use weights: none or a .pth path')
        weights = path
    state = read_state_dict(weights)
    try:
        net.load_state_dict(state)
    except RuntimeError as error:
        raise WeightsError(f'{weights} is not a torchvision resnet50 state dict: {error}') \
            from None
