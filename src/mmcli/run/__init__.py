"""One run of one task: the options, the ``Task`` interface, the ``Job`` (set up in ``job``, written and
ended in ``lifecycle``, run in ``pipeline``), the loader (prefetch, batching, back-off), the embedding cache,
progress, and the engines that run a Job elsewhere: Ray (``engines``) or a running ``mmcli serve``
(``remote``)."""
