"""Model zoo: the architectures apb compresses, built by name from one registry.

>>> import apb.models
>>> apb.models.available()
['lenet5', 'mlp', 'resnet18', 'resnet20', 'vgg_small']
>>> model = apb.models.create("lenet5", input_size=8, activation="hardtanh")
>>> model.input_shape
(1, 8, 8)

Every model is built from standard modules only (``nn.Conv2d``, ``nn.Linear``, BatchNorm,
pooling, activations, ``nn.Flatten``), registered in data-flow order: the first
``nn.Conv2d``/``nn.Linear`` in ``named_modules()`` is the input layer and the last
``nn.Linear`` is the classifier. Each model has ``input_shape`` (C, H, W) and ``num_classes``
attributes and an ``activation`` argument, ``"relu"`` or ``"hardtanh"``.
"""

from apb.models import lenet, mlp, resnet18, resnet_cifar, vgg_small  # noqa: F401 (register)
from apb.models.common import ACTIVATIONS, make_activation
from apb.models.registry import available, create, parameters, register

__all__ = ["ACTIVATIONS", "available", "create", "make_activation", "parameters", "register"]
