"""The client's side of ``mmcli serve`` (``client``: the connection; ``offload``: a Job's run through it) and
what both sides share: the socket's place (``paths``), the framing (``protocol``), the task on the wire
(``wire``) and the work items (``work``)."""
