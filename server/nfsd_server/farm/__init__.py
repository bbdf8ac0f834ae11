"""Scale-out on a Ray cluster (the optional ``farm`` extra): ``nfsd batch`` and ``nfsd serve --ray``.

Only ``cluster``, ``actors`` and ``ray_jobs`` import Ray, and only when a command asks for a cluster, so the
default install stays Ray-free. Every job runs the same function the in-process server runs
(``nfsd_server.pipeline.run_generation``, via ``job.run_job``).
"""
