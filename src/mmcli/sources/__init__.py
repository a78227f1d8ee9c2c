"""Where images come from: paths, directories, globs, stdin, URLs and manifests expanded into items, and
the isolated decoder processes that turn untrusted bytes into pixels within limits. Imports nothing else of mmcli
but ``errors`` and ``version``."""
