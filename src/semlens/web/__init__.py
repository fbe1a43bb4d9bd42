"""The explorer (``semlens serve``): a local web app to search, browse, audit and compare Lenses.

FastAPI and uvicorn come with semlens; ``import semlens`` never imports them.
"""

from __future__ import annotations

import socket
import threading
import webbrowser
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from .._util.errors import SemlensError, asked

if TYPE_CHECKING:
    from ..lens.lens import Lens

LOOPBACK = ("127.0.0.1", "localhost", "::1")


def free_port(host: str, port: int) -> None:
    """Refuse, in words, a port another program holds (uvicorn's own message is a raw ``[Errno 98]`` after start-up)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds: a port left in TIME_WAIT is free
        try:
            probe.bind((host, port))
        except OSError as error:
            raise SemlensError(
                f"port {port} on {host} is taken ({error.strerror or error}): another `semlens serve` or another program "
                f"holds it; stop it, or give another port ({asked(f'port={port + 1}', f'--port {port + 1}')})"
            ) from None


def serve(
    lenses: Sequence[Lens | str | Path], host: str = "127.0.0.1", port: int = 8000, open_browser: bool = False, say=print,
    opener: Callable[[Path], Lens] | None = None,
) -> None:
    """Serve ``lenses`` (opened Lenses or their directories, opened by ``opener``, default ``Lens.open``: one that cannot
    be is served as damaged) until interrupted; binds this machine only unless ``host`` says otherwise."""
    try:
        import uvicorn

        from .app import create_app
    except ModuleNotFoundError as error:
        raise SemlensError(f"`semlens serve` needs {error.name}, which semlens installs: pip install --force-reinstall semlens") from None
    free_port(host, port)
    local = host in LOOPBACK
    app = create_app(lenses, allowed_hosts=[*LOOPBACK, "[::1]"] if local else None, **({"opener": opener} if opener else {}))
    for served in app.state.explorer.served:
        if served.damaged:
            say(f"warning: Lens {served.name} is served as damaged: {served.damaged}")
            continue
        if served.images_missing:  # checked once: the pages read the same answer
            say(f"note: Lens {served.name} is served without its example images: {served.images_missing}")
        if (passed := served.lens.sources.foundation_in_memory()) is not None:
            say(
                f"note: Lens {served.name} was embedded by a foundation model passed in memory ({passed}), which it cannot load "
                "again: its search by text or image, labels and comparisons need it; serve it from Python with that model "
                "(semlens.web.serve([Lens.open(LENS, foundation=MODEL)]))"
            )
    shown = "127.0.0.1" if host == "0.0.0.0" else f"[{host}]" if ":" in host else host
    url = f"http://{shown}:{port}/"
    if not local:
        say(f"warning: serving on {host}: anyone who can reach this address can read these Lenses")
    say(f"semlens explorer: {url} (Ctrl+C to stop)")
    if open_browser:
        threading.Timer(1.0, webbrowser.open, [url]).start()
    uvicorn.run(app, host=host, port=port, log_level="warning")
