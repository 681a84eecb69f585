"""The local Ray a sweep starts for itself."""

from __future__ import annotations

import time


def test_a_local_ray_prestarts_no_idle_workers():
    """Tune runs trials in workers with a runtime_env of their own, so workers prestarted for the
    driver never run a trial: a local Ray started by the sweep starts none (on a small machine
    they only slow the first trials while they start)."""
    import psutil
    import ray

    from mitp.config.params import RayConfig
    from mitp.sweep.runner import connect_ray

    assert not ray.is_initialized()
    assert connect_ray(RayConfig(num_cpus=2))
    try:
        time.sleep(5)  # prestarted workers appear within a second or two of the driver connecting
        titles = []
        for proc in psutil.Process().children(recursive=True):
            try:
                titles.append(" ".join(proc.cmdline()))
            except psutil.Error:
                pass
        assert any("raylet" in t for t in titles), titles  # the local Ray's processes are seen
        assert not [t for t in titles if t.startswith("ray::IDLE")], titles
    finally:
        ray.shutdown()
