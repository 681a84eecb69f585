"""Ray Tune sweeps over the MITP configuration, tracked in MLflow (one parent, a child per
trial): ``search`` (the parsed space as Tune forms, every trial checked before launch),
``trainable`` (one trial = ``fit``), ``runner`` (Ray, MLflow parent, Tuner), ``results`` (table,
best configuration). The only package that imports Ray. Usage and behaviour: docs/cluster.md.
"""
