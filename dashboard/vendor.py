"""Third-party front-end files, served from where the installs put them.

plotly.js ships inside the ``plotly`` wheel; the socket.io client comes from
npm (``node_modules``). Neither is copied into the repository.
"""

from __future__ import annotations

from pathlib import Path

from flask import Blueprint, abort, send_file

from mopq.dashboard.factory import ROOT

blueprint = Blueprint("vendor", __name__, url_prefix="/vendor")


def _plotly_js() -> Path:
    import plotly

    return Path(plotly.__file__).parent / "package_data" / "plotly.min.js"


def _socketio_js() -> Path:
    return ROOT / "node_modules" / "socket.io-client" / "dist" / "socket.io.min.js"


FILES = {"plotly.min.js": _plotly_js, "socket.io.min.js": _socketio_js}


@blueprint.get("/<name>")
def vendor_file(name: str):
    locate = FILES.get(name)
    if locate is None:
        abort(404)
    path = locate()
    if not path.exists():
        abort(404, description=f"{name} is not installed; run `make install`.")
    return send_file(path, mimetype="application/javascript", max_age=3600)
