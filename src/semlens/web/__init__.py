"""The explorer (``semlens serve``): a local web app to search, browse, audit and compare Lenses.

It needs the ``web`` extra (FastAPI, uvicorn); ``import semlens`` never imports it.
"""

from __future__ import annotations

import threading
import webbrowser
from collections.abc import Sequence
from pathlib import Path

from .._util.errors import SemlensError

LOOPBACK = ("127.0.0.1", "localhost", "::1")


def serve(
    lenses: Sequence[str | Path], host: str = "127.0.0.1", port: int = 8000, open_browser: bool = False, say=print
) -> None:
    """Serve ``lenses`` until interrupted; binds this machine only unless ``host`` says otherwise."""
    try:
        import uvicorn

        from .app import create_app
    except ModuleNotFoundError as error:
        raise SemlensError(f"`semlens serve` needs {error.name}: pip install 'semlens[web]'") from None
    local = host in LOOPBACK
    app = create_app(lenses, allowed_hosts=[*LOOPBACK, "[::1]"] if local else None)
    shown = "127.0.0.1" if host == "0.0.0.0" else f"[{host}]" if ":" in host else host
    url = f"http://{shown}:{port}/"
    if not local:
        say(f"warning: serving on {host}: anyone who can reach this address can read these Lenses")
    say(f"semlens explorer: {url} (Ctrl+C to stop)")
    if open_browser:
        threading.Timer(1.0, webbrowser.open, [url]).start()
    uvicorn.run(app, host=host, port=port, log_level="warning")
