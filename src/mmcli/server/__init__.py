"""mmcli serve: a process that keeps models loaded and runs the CLI's work for it (a Unix socket, the
user's only) and for other programs (an HTTP API). The CLI's writer, resume and locks stay with the client.
"""
