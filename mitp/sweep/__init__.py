"""Ray Tune sweeps over the MITP configuration, tracked in MLflow (one parent, a child per
trial): ``space`` (parsing, validation), ``trainable`` (one trial = ``fit``), ``runner`` (Ray,
MLflow parent, Tuner), ``results`` (table, best trial). Usage and behaviour: docs/cluster.md.
"""
