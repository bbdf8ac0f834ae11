"""Scale-out on a Ray cluster (the optional ``farm`` extra): ``nfsd batch`` and ``nfsd serve --ray``.

Only ``cluster``, ``actors`` and ``ray_jobs`` import Ray, and only when a command asks for a cluster, so the
default install stays Ray-free. Every job runs the same function the in-process server runs
(``nfsd_server.pipeline.run_generation``, via ``job.run_job``).
"""

from nfsd_server.train import TrainConfig

# A farm worker may be killed at any time (preempted, OOM, a lost node); `nfsd batch` then resumes from the
# last checkpoint, so it checkpoints by time as well as by steps.
WORKER_CHECKPOINT_EVERY_S = 60.0
WORKER_TRAIN_CONFIG = TrainConfig(checkpoint_every_s=WORKER_CHECKPOINT_EVERY_S)


def worker_generate(*args, **kwargs):
    """``run_generation`` with ``WORKER_TRAIN_CONFIG`` (looked up at call time, where tests replace it)."""
    from nfsd_server import pipeline

    return pipeline.run_generation(*args, config=WORKER_TRAIN_CONFIG, **kwargs)
