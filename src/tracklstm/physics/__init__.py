"""The physics of a charged track in the GlueX solenoid, without a network.

- ``solenoid``: the field map and the Runge-Kutta propagation through it;
- ``material``: energy loss and multiple scattering in the simulated detector;
- ``helix_field``: the piecewise-uniform fields of the helix propagators;
- ``helix``: the straight line and the helix (NumPy);
- ``helix_prior``: the same helix step in torch, inside the residual model and its exports;
- ``baselines``: the propagations every model is judged against (straight line, helix, the
  field map without material).
"""
