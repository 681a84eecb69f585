"""Ray Tune sweeps over the MITP configuration, tracked in MLflow (one parent, a child per trial).

* :mod:`~mitp.sweep.space`: ``sweep.space`` -> Tune's ``param_space``, and validation of every
  trial configuration before launch;
* :mod:`~mitp.sweep.trainable`: one trial = :func:`mitp.train.fit` with a Tune reporting hook,
  checkpoints travelling through ``tune.get_checkpoint`` / ``tune.Checkpoint``;
* :mod:`~mitp.sweep.runner`: Ray connection, the parent MLflow run, ``Tuner`` / ``Tuner.restore``;
* :mod:`~mitp.sweep.results`: the results table and the best configuration.

The entry point is ``python -m pipeline.sweep --dataset NAME``.
"""
