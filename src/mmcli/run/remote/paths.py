"""Where the server's socket lives, and the checks that keep it the user's only.

$MMCLI_SOCKET, else ``$XDG_RUNTIME_DIR/mmcli/mmcli.sock``, else ``<user cache dir>/mmcli/run/mmcli.sock``
(the cache dir as for the embedding cache's parent: $XDG_CACHE_HOME or ~/.cache). The directory is created
mode 0700 and the socket is made 0600; a directory or socket another user owns, or one others may enter or
write, is never used: a client runs in the process instead, a server refuses to start.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from mmcli.errors import UsageError

NAME = "mmcli.sock"
AF_UNIX_MAX = 107  # bytes of a socket path, on Linux (108 with the NUL); macOS allows 103


def socket_path() -> Path:
    value = os.environ.get("MMCLI_SOCKET", "")
    if value:
        return Path(value).expanduser()
    runtime = os.environ.get("XDG_RUNTIME_DIR", "")
    if runtime and os.path.isdir(runtime):
        return Path(runtime) / "mmcli" / NAME
    cache = os.environ.get("XDG_CACHE_HOME", "")
    base = Path(cache) if cache else Path.home() / ".cache"
    return base / "mmcli" / "run" / NAME


def untrusted(path: Path, want_socket: bool = True) -> str | None:
    """Why the socket at ``path`` (or its directory) may not be trusted; None when it is the user's only.

    A missing socket is not a reason (nothing answers there)."""
    uid = os.getuid()
    try:
        st = os.lstat(path.parent)
    except FileNotFoundError:
        return None
    if not stat.S_ISDIR(st.st_mode):
        return f"{path.parent} is not a directory"
    if st.st_uid != uid:
        return f"{path.parent} belongs to uid {st.st_uid}, not to you (uid {uid})"
    if st.st_mode & 0o022:
        return f"{path.parent} may be written by others (mode {stat.S_IMODE(st.st_mode):o})"
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return None
    if want_socket and not stat.S_ISSOCK(st.st_mode):
        return f"{path} is not a socket"
    if st.st_uid != uid:
        return f"{path} belongs to uid {st.st_uid}, not to you (uid {uid})"
    return None


def prepare_dir(path: Path) -> None:
    """Create the socket's directory (0700, parents as needed) and check it: the server's side."""
    if len(os.fsencode(path)) > AF_UNIX_MAX:
        raise UsageError(
            f"the socket path {path} is longer than a Unix socket allows ({AF_UNIX_MAX} bytes)",
            "set MMCLI_SOCKET (or --socket) to a shorter path",
        )
    created = not path.parent.exists()
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"cannot create {path.parent}: {exc.strerror or exc}") from exc
    if created:
        os.chmod(path.parent, 0o700)
    reason = untrusted(path)
    if reason:
        raise UsageError(f"will not serve on {path}: {reason}", "use a directory of your own (mode 0700)")


def is_loopback(host: str) -> bool:
    """An address only this machine reaches (a host name may resolve to anything: not loopback)."""
    import ipaddress

    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False
