"""normref: reference implementations of neural-network normalizations, weight
reparameterizations and optimizer updates, with hand-derived backward passes.

Every op is written once against the array API standard (NumPy, CuPy, PyTorch, array-api-strict,
...), runs fast through Numba on the CPU and raw CUDA kernels on the GPU, and is specified in
specs/<op>.md. Importing normref loads NumPy and array-api-compat only.
"""

# The registry imports every op module; it goes first so that the optimizer modules, which look
# their entries up in it, find it already there.
from normref import registry

# isort: split
from normref import optim
from normref._dispatch import BACKENDS, current_backend, use_backend
from normref.norms.batch_norm import (
    BatchNormSaved,
    batch_norm,
    batch_norm_backward,
    batch_norm_forward,
)
from normref.norms.group_norm import (
    GroupNormSaved,
    group_norm,
    group_norm_backward,
    group_norm_forward,
)
from normref.norms.instance_norm import (
    InstanceNormSaved,
    instance_norm,
    instance_norm_backward,
    instance_norm_forward,
)
from normref.norms.layer_norm import (
    LayerNormSaved,
    layer_norm,
    layer_norm_backward,
    layer_norm_forward,
)
from normref.norms.rms_norm import RMSNormSaved, rms_norm, rms_norm_backward, rms_norm_forward
from normref.registry import vjp

__version__ = "0.1.0"

__all__ = [
    "BACKENDS",
    "BatchNormSaved",
    "GroupNormSaved",
    "InstanceNormSaved",
    "batch_norm",
    "batch_norm_backward",
    "batch_norm_forward",
    "group_norm",
    "group_norm_backward",
    "group_norm_forward",
    "instance_norm",
    "instance_norm_backward",
    "instance_norm_forward",
    "LayerNormSaved",
    "RMSNormSaved",
    "current_backend",
    "layer_norm",
    "layer_norm_backward",
    "layer_norm_forward",
    "optim",
    "registry",
    "rms_norm",
    "rms_norm_backward",
    "rms_norm_forward",
    "use_backend",
    "vjp",
]
