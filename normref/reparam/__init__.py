"""Weight reparameterizations: the weight a layer uses is computed from trainable parameters,
w = f(params), and each op's backward maps dL/dw to dL/dparams (design.md §3).

One module per op: weight_norm, spectral_norm, weight_standardization,
scaled_weight_standardization, weight_compander, binary_connect. The math of each is derived in
specs/<op>.md.
"""
