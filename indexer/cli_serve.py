"""`lookalike serve`: the browser search page (Streamlit) for a store, started once its store and port check out."""
import os
import sys
from pathlib import Path

import click

from .cli_common import friendly_errors, store_option


@click.command()
@store_option
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to bind; 0.0.0.0 exposes the page to the network.")
@click.option("--port", type=click.IntRange(1, 65535), default=8501, show_default=True,
              help="The page's port (one that another program holds is refused).")
@click.option("--model", envvar="LOOKALIKE_MODEL", default=None,
              help="Another copy of the store's model for embedding uploads (e.g. a local directory).")
@click.option("--max-upload-mb", type=click.IntRange(1, 2000), default=50, show_default=True,
              help="Largest query upload accepted.")
@click.option("--basemap", type=click.Choice(["none", "carto"]), default="none", show_default=True,
              help="A base layer under the scene map; carto makes viewers' browsers fetch Carto's tiles.")
@friendly_errors
def serve(store_dir, host, port, model, max_upload_mb, basemap):
    """Start the browser search page (Streamlit) for a store.

    Example: lookalike serve --store demo-store --port 8501
    """
    import importlib.util

    from store import Store

    Store.open(store_dir).close()  # a missing store is one clear line here, not a page full of errors
    if model:  # so is a model folder that is not there (the page would say so only at the first upload)
        from indexer.embedder import check_model_name

        check_model_name(model)
    _check_port(host, port)
    app_path = Path(importlib.util.find_spec("ui").origin).parent / "app.py"
    env = dict(os.environ, LOOKALIKE_STORE=str(store_dir.absolute()))
    if model:
        env["LOOKALIKE_MODEL"] = model
    env["LOOKALIKE_BASEMAP"] = "" if basemap == "none" else basemap
    env["LOOKALIKE_MAX_UPLOAD_MB"] = str(max_upload_mb)
    command = [
        sys.executable, "-m", "streamlit", "run", str(app_path),
        "--server.address", host, "--server.port", str(port), "--server.headless", "true",
        "--server.fileWatcherType", "none", "--browser.gatherUsageStats", "false",
        "--client.showErrorDetails", "none", "--client.toolbarMode", "minimal",
        "--server.maxUploadSize", str(max_upload_mb),
    ]
    click.echo(f"lookalike: serving {store_dir} at http://{host}:{port}", err=True)
    # Become Streamlit (exec), so that signals (Ctrl-C, kill, docker stop) reach the server itself.
    os.execve(sys.executable, command, env)


def _check_port(host: str, port: int) -> None:
    """Refuse a port something else listens on, in one line, before Streamlit starts and says it its own way."""
    import errno
    import socket

    try:
        addresses = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as error:
        raise click.BadParameter(f"{host!r} does not resolve ({error.strerror})", param_hint="--host") from error
    for family, kind, proto, _, address in addresses:
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server binds: TIME_WAIT is free
            try:
                probe.bind(address)
            except OSError as error:
                if error.errno != errno.EADDRINUSE:
                    raise click.BadParameter(f"cannot listen on {host} ({error.strerror}): use an address of this "
                                             "machine, 127.0.0.1 or 0.0.0.0", param_hint="--host") from error
                raise click.ClickException(
                    f"cannot serve on {host}:{port} ({error.strerror}): another program (another `lookalike "
                    "serve`?) may hold it; pick another --port") from error
