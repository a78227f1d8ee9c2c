"""Engines that run a Job somewhere other than this process (``--engine``).

``local`` is ``Job.execute`` itself; ``ray`` (``mmcli.run.engines.ray``, needs ``mmcli[ray]``) computes the same
records with Ray Data on a local or remote Ray cluster. Nothing here is imported unless ``--engine`` asks.
"""
