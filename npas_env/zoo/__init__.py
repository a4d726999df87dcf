"""Model zoo: CIFAR-style models (no torchvision) and cached pretrained starting points."""

from npas_env.zoo.mobilenetv2 import CifarMobileNetV2, mobilenetv2
from npas_env.zoo.pretrained import checkpoint_path, pretrained, pretrained_info
from npas_env.zoo.recipes import TrainRecipe, default_recipe
from npas_env.zoo.registry import MODELS, build_model, register_model
from npas_env.zoo.resnet import CifarResNet, resnet20, resnet56
from npas_env.zoo.small_cnn import SmallCNN
from npas_env.zoo.train import TrainResult, evaluate_accuracy, make_sgd, train_epochs
from npas_env.zoo.vgg import CifarVGG, vgg16

__all__ = [
    "MODELS", "CifarMobileNetV2", "CifarResNet", "CifarVGG", "SmallCNN", "TrainRecipe",
    "TrainResult", "build_model", "checkpoint_path", "default_recipe", "evaluate_accuracy",
    "make_sgd", "mobilenetv2", "pretrained", "pretrained_info", "register_model", "resnet20",
    "resnet56", "train_epochs", "vgg16",
]
