"""Where records go: writers (stdout, --output), resume, file formats, the HTML report, eval's metrics.
Builds on ``sources`` (the report's thumbnails) and nothing higher."""
