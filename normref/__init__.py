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
from normref.norms.batch_channel_norm import (
    BatchChannelNormSaved,
    batch_channel_norm,
    batch_channel_norm_backward,
    batch_channel_norm_forward,
)
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
from normref.reparam.binary_connect import (
    BinaryConnectSaved,
    binary_connect,
    binary_connect_backward,
    binary_connect_forward,
)
from normref.reparam.scaled_weight_standardization import (
    ScaledWeightStandardizationSaved,
    scaled_weight_standardization,
    scaled_weight_standardization_backward,
    scaled_weight_standardization_forward,
)
from normref.reparam.spectral_norm import (
    SpectralNormSaved,
    spectral_norm,
    spectral_norm_backward,
    spectral_norm_forward,
    spectral_norm_init,
)
from normref.reparam.weight_compander import (
    WeightCompanderSaved,
    weight_compander,
    weight_compander_backward,
    weight_compander_forward,
    weight_compander_init,
)
from normref.reparam.weight_norm import (
    WeightNormSaved,
    weight_norm,
    weight_norm_backward,
    weight_norm_forward,
    weight_norm_init,
)
from normref.reparam.weight_standardization import (
    WeightStandardizationSaved,
    weight_standardization,
    weight_standardization_backward,
    weight_standardization_forward,
)

__version__ = "0.1.0"

__all__ = [
    "BACKENDS",
    "BatchChannelNormSaved",
    "BatchNormSaved",
    "BinaryConnectSaved",
    "GroupNormSaved",
    "InstanceNormSaved",
    "LayerNormSaved",
    "RMSNormSaved",
    "ScaledWeightStandardizationSaved",
    "SpectralNormSaved",
    "WeightCompanderSaved",
    "WeightNormSaved",
    "WeightStandardizationSaved",
    "batch_channel_norm",
    "batch_channel_norm_backward",
    "batch_channel_norm_forward",
    "batch_norm",
    "batch_norm_backward",
    "batch_norm_forward",
    "binary_connect",
    "binary_connect_backward",
    "binary_connect_forward",
    "current_backend",
    "group_norm",
    "group_norm_backward",
    "group_norm_forward",
    "instance_norm",
    "instance_norm_backward",
    "instance_norm_forward",
    "layer_norm",
    "layer_norm_backward",
    "layer_norm_forward",
    "optim",
    "registry",
    "rms_norm",
    "rms_norm_backward",
    "rms_norm_forward",
    "scaled_weight_standardization",
    "scaled_weight_standardization_backward",
    "scaled_weight_standardization_forward",
    "spectral_norm",
    "spectral_norm_backward",
    "spectral_norm_forward",
    "spectral_norm_init",
    "use_backend",
    "vjp",
    "weight_compander",
    "weight_compander_backward",
    "weight_compander_forward",
    "weight_compander_init",
    "weight_norm",
    "weight_norm_backward",
    "weight_norm_forward",
    "weight_norm_init",
    "weight_standardization",
    "weight_standardization_backward",
    "weight_standardization_forward",
]
