"""What chart pages need so that plotly.js runs under the strict CSP.

Why: plotly.js injects CSS as inline ``<style>`` elements, which the
Content-Security-Policy (``style-src 'self'``) refuses, and each refusal is
an error in the browser's console. Plotly skips its own rules when an element
``#plotly.js-style-global.no-inline-styles`` exists (static/charts.css
provides the rules instead), and the map library bundled in it skips its
stylesheet when an element with the id it guards on exists. That id is a
hash that changes with plotly's version, so it is read from the installed
``plotly.min.js`` rather than written here.
"""

from __future__ import annotations

import functools
import re

from mopq.dashboard.vendor import _plotly_js

STYLE_GUARD = re.compile(r'getElementById\("([0-9a-f]{64})"\)\)\{var \w+=document\.'
                         r'createElement\("style"\)')


@functools.cache
def style_guard_ids() -> tuple[str, ...]:
    """Ids plotly.js checks before injecting a ``<style>`` element (none if not installed)."""
    try:
        source = _plotly_js().read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ()
    return tuple(dict.fromkeys(STYLE_GUARD.findall(source)))
