"""The networks: the reference model and the helix-correcting residual propagator.

- ``reference``: the published LSTM stack (``TrackRNN``) and its physical-units wrapper;
- ``residual``: the residual propagator, a float64 helix step plus a learned correction;
- ``scale_mixture``: the shape of a covariance head's errors, a scale mixture of its covariance;
- ``build``: the kinds of model (``model.kind``) and ``build_model`` from a config section.
"""
