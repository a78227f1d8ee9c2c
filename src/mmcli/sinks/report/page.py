"""The report page: one self-contained HTML file, written as a stream.

Everything from the inputs (file names, labels, captions, errors) travels as JSON inside
``<script type="application/json">`` with ``<``, ``>`` and ``&`` escaped, and the page's script puts it into
the DOM as text only, so no file name or caption can end the script or add markup. The Content-Security-
Policy allows nothing from the network and only the page's own script (by its hash): even a mistake in
that escaping could not run anything or load anything.
"""

from __future__ import annotations

import base64
import hashlib
import html
import json
from collections.abc import Iterable
from functools import cache
from importlib import resources
from typing import IO, Any

# In the first bytes of every report: what lets mmcli replace a report it wrote, and nothing else.
MARKER = '<meta name="generator" content="mmcli report">'


@cache
def asset(name: str) -> str:
    return resources.files("mmcli.sinks.report").joinpath(name).read_text("utf-8")


def script_json(value: Any) -> bytes:
    """JSON that is safe inside a <script> element: ASCII only (odd file-name bytes survive as \\udcXX
    escapes), and no ``<``, ``>`` or ``&`` (they occur only inside strings, where \\u escapes say the
    same)."""
    text = json.dumps(value, ensure_ascii=True, separators=(",", ":"), allow_nan=False)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026").encode("ascii")


def _policy(script: str) -> str:
    digest = base64.b64encode(hashlib.sha256(script.encode("utf-8")).digest()).decode("ascii")
    return (
        "default-src 'none'; img-src data:; style-src 'unsafe-inline'; "
        f"script-src 'sha256-{digest}'; base-uri 'none'; form-action 'none'"
    )


def write_page(out: IO[bytes], title: str, data: dict[str, Any], thumbs: Iterable[bytes | str]) -> None:
    """The page, to ``out``: head, the records (``data``), the thumbnails (streamed: base64 JPEG bytes or
    a placeholder's reason each), then the script that renders them."""
    script = asset("report.js")
    head = (
        "<!DOCTYPE html>\n"
        '<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f"{MARKER}\n"
        f'<meta http-equiv="Content-Security-Policy" content="{_policy(script)}">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{html.escape(title)}</title>\n"
        f"<style>\n{asset('report.css')}</style>\n</head>\n<body>\n"
        f'<header><h1>{html.escape(title)}</h1><p id="meta"></p></header>\n'
        '<noscript><p class="notice">This report needs JavaScript to show its records.</p></noscript>\n'
        '<main id="main"></main>\n'
        '<script type="application/json" id="mmcli-data">'
    )
    out.write(head.encode("utf-8"))
    out.write(script_json(data))
    out.write(b'</script>\n<script type="application/json" id="mmcli-thumbs">[')
    for index, thumb in enumerate(thumbs):
        if index:
            out.write(b",")
        if isinstance(thumb, bytes):
            out.write(b'"' + thumb + b'"')  # base64: no quote, backslash or "<" can occur
        else:
            out.write(script_json({"error": thumb}))
    out.write(b"]</script>\n<script>" + script.encode("utf-8") + b"</script>\n</body>\n</html>\n")
