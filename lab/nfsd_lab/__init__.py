"""The laboratory beside the engine: experiments, judges and the micro model's training; never shipped.

It depends on ``nfsd_server`` only through its declared extension points (``register_prior``, the trainer's
hooks); ``nfsd_server`` never imports it.
"""
