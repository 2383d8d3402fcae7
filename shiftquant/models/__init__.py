"""Model factory: timm, torchvision and the CIFAR-style ResNets, with local weight loading."""
from .factory import build_model, load_weights, read_state_dict
from .plain_cnn import lenet5, lenet5_avg, vgg_small
from .resnet_cifar import CifarResNet, resnet8, resnet20, resnet_tiny

__all__ = ["CifarResNet", "build_model", "lenet5", "lenet5_avg", "load_weights", "read_state_dict", "resnet20",
           "resnet8", "resnet_tiny", "vgg_small"]
