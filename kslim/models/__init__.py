"""Reference models for 28x28x1 inputs on which compression is shown."""

from kslim.models.mobilenet import mobilenet_v1
from kslim.models.resnet import resnet
from kslim.models.vgg import vgg
from kslim.models.zoo import (REFERENCE_MODELS, Pretrained, build, cache_dir, compile_classifier, pretrained, shipped,
                              train)

__all__ = [
    "mobilenet_v1", "resnet", "vgg", "REFERENCE_MODELS", "build", "cache_dir",
    "compile_classifier", "pretrained", "Pretrained", "shipped", "train",
]
