"""torch.nn: modules, parameters, losses; ``nn.functional`` and ``nn.init`` as modules."""
from . import functional, init  # noqa: F401
from .modules import (ELU, GELU, BCELoss, BCEWithLogitsLoss, CrossEntropyLoss,  # noqa: F401
                      Dropout, Embedding, Flatten, Hardtanh, HuberLoss, Identity, KLDivLoss,
                      L1Loss, LazyLinear, LeakyReLU, Linear, LogSoftmax, Module, ModuleDict,
                      ModuleList, MSELoss, NLLLoss, Parameter, ParameterList, ReLU, ReLU6,
                      Sequential, SiLU, Sigmoid, SmoothL1Loss, Softmax, Softplus, Tanh,
                      Unflatten)
