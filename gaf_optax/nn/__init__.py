"""Activations with reshaped gradients (GAAF, ANAct) and amplification points."""

from gaf_optax.nn._amplify import AmplificationPoint
from gaf_optax.nn._amplify import AmplificationPoints
from gaf_optax.nn._amplify import amplify
from gaf_optax.nn._amplify import point_signal_norms
from gaf_optax.nn._amplify import set_point_factors
from gaf_optax.nn._amplify import signal_norms

from gaf_optax.nn._anact import ANAct
from gaf_optax.nn._anact import NGELU
from gaf_optax.nn._anact import NReLU
from gaf_optax.nn._anact import NSwish
from gaf_optax.nn._anact import NTanh
from gaf_optax.nn._anact import anact_lambda
from gaf_optax.nn._anact import gaussian_lambda
from gaf_optax.nn._gaaf import gaaf
from gaf_optax.nn._gaaf import gaaf_relu
from gaf_optax.nn._gaaf import gaaf_sigmoid
from gaf_optax.nn._gaaf import gaaf_tanh
from gaf_optax.nn._gaaf import relu_shape
from gaf_optax.nn._gaaf import sigmoid_shape
from gaf_optax.nn._gaaf import tanh_shape

__all__ = [
    "ANAct",
    "AmplificationPoint",
    "AmplificationPoints",
    "NGELU",
    "NReLU",
    "NSwish",
    "NTanh",
    "amplify",
    "anact_lambda",
    "gaussian_lambda",
    "gaaf",
    "gaaf_relu",
    "gaaf_sigmoid",
    "gaaf_tanh",
    "point_signal_norms",
    "relu_shape",
    "set_point_factors",
    "sigmoid_shape",
    "signal_norms",
    "tanh_shape",
]
