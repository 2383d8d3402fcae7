"""Model factory: timm, torchvision and the CIFAR-style ResNets, with local weight loading."""
from .factory import build_model, load_weights, read_state_dict
from .resnet_cifar import CifarResNet, resnet20, resnet_tiny

__all__ = ["CifarResNet", "build_model", "load_weights", "read_state_dict", "resnet20", "resnet_tiny"]
