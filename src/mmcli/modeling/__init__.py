"""Everything about a model: the spec (``spec``), name -> spec (``registry``), device and dtype
(``runtime``), the backends that run a family, and the scoring on top of them (``tasks``, ``views``,
``pooling``). Named ``modeling`` because ``mmcli/models/`` holds the bundled checkpoints in a wheel."""
