"""One module per subcommand. Each imports only typer and mmcli's light modules at import time."""
