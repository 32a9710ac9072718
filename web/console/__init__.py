"""The operator console: a server-rendered web UI for the ECs' operators, beside the Prefect UI."""

from web.console.app import MOUNT_PATH, create_console_app

__all__ = ["MOUNT_PATH", "create_console_app"]
