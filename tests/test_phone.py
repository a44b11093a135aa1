"""Every page on a phone (Chromium at 390 x 844, mobile, touch), against a live gunicorn.

What a 390 px screen shows that a desktop does not: a table wider than the
screen hides its last columns behind a sideways scroll nobody sees, a badge
or a chart's date label is cut at the edge. So on every page, with data, with
an empty database read without signing in, and with the engine unreachable
(the banner instead of figures), and with data on the phone turned sideways
(844 px, where the widest tables still do not fit): nothing in <main> reaches
past the right edge or is cut by a scrolling box, every table column's label
is on screen beside its values, the charts' tick labels stay inside the
chart, and nothing logs an error or trips the Content-Security-Policy.
Every page the navigation links to is visited. The queue history chart draws
every series against time (lines on one date axis, the figure the page was
given spanning the window) over exactly the window its button names, and the
Activities page says what its rate and time left mean.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from tests.browsers import Watched, needs_chromium
from tests.dashboard_data import make_dead, populate
from tests.helpers import free_port
from tests.live_server import live_dashboard

PHONE = {"width": 390, "height": 844}
SIDEWAYS = {"width": 844, "height": 390}  # the same phone turned: wide tables still do not fit
ADMIN = ("admin", "secret")
PAGES = ["/", "/queues", "/queues/orders", "/queues/orders?resolution=h", "/failed",
         "/failed?state=failing", "/search", "/search?q=order_id%3D41", "/workers",
         "/activities", "/metrics-ui", "/audit", "/schedules"]
EMPTY_PAGES = ["/", "/queues", "/queues/orders", "/failed", "/failed?state=failing", "/search",
               "/search?q=order_id%3D41", "/workers", "/activities", "/metrics-ui", "/audit",
               "/schedules"]
WATCH_CSP = """
window.__csp = [];
document.addEventListener("securitypolicyviolation", function (event) {
  window.__csp.push(event.violatedDirective + " " + event.blockedURI);
});
"""

# Everything that is wrong with the layout at `width`, as sentences (empty when all is well).
LAYOUT_PROBLEMS = """(width) => {
  const problems = [];
  const root = document.documentElement;
  if (root.scrollWidth > width) {
    problems.push("the page scrolls sideways: " + root.scrollWidth + " px");
  }
  const name = (node) => {
    const text = (node.textContent || "").trim().replace(/\\s+/g, " ").slice(0, 40);
    const classes = typeof node.className === "string" && node.className.trim()
      ? "." + node.className.trim().replace(/\\s+/g, ".") : "";
    return node.tagName.toLowerCase() + classes + (text ? " \u201c" + text + "\u201d" : "");
  };
  const shown = (node) => {
    const box = node.getBoundingClientRect();
    return box.width > 0 && box.height > 0 && getComputedStyle(node).visibility !== "hidden";
  };
  const clippers = (node) => {
    const boxes = [];
    for (let up = node.parentElement; up && up !== document.body; up = up.parentElement) {
      const style = getComputedStyle(up);
      if (style.overflowX !== "visible" || style.overflowY !== "visible") boxes.push(up);
    }
    return boxes;
  };
  // Every element in <main> (an SVG counts as one box; plotly clips its own insides).
  document.querySelectorAll("main *").forEach((node) => {
    if (node.closest("svg") && node.tagName.toLowerCase() !== "svg") return;
    if (!shown(node)) return;
    const box = node.getBoundingClientRect();
    if (box.right > width + 0.5) problems.push(name(node) + " ends at " + box.right + " px");
    if (box.left < -0.5) problems.push(name(node) + " starts at " + box.left + " px");
  });
  // Table cells and badges must not be cut by a box that scrolls or hides its overflow.
  document.querySelectorAll("main td, main th, main .badge").forEach((node) => {
    if (!shown(node)) return;
    const box = node.getBoundingClientRect();
    clippers(node).forEach((up) => {
      const outer = up.getBoundingClientRect();
      if (box.right > outer.right + 0.5 || box.left < outer.left - 0.5) {
        problems.push(name(node) + " is cut by " + name(up).slice(0, 40));
      }
    });
    if (node.matches(".badge") && node.scrollWidth > node.clientWidth + 1) {
      problems.push(name(node) + " cuts its own text");
    }
  });
  // Charts: every tick label inside the chart.
  document.querySelectorAll("main .js-plotly-plot").forEach((chart) => {
    const svg = chart.querySelector(".main-svg");
    if (!svg) return;
    const outer = svg.getBoundingClientRect();
    chart.querySelectorAll(".xtick text, .ytick text, .y2tick text").forEach((label) => {
      const box = label.getBoundingClientRect();
      if (!box.width) return;
      if (box.left < outer.left - 0.5 || box.right > outer.right + 0.5 ||
          box.bottom > outer.bottom + 0.5 || box.top < outer.top - 0.5) {
        problems.push("chart " + (chart.id || chart.closest("[data-name]")?.dataset.name) +
          ": tick label \u201c" + label.textContent + "\u201d is cut");
      }
    });
    // ... and no two of them on top of each other (a time under the y axis' 0).
    const labels = [...chart.querySelectorAll(".xtick text, .ytick text, .y2tick text")]
      .filter((label) => label.textContent && label.getBoundingClientRect().width);
    labels.forEach((one, i) => labels.slice(i + 1).forEach((other) => {
      const a = one.getBoundingClientRect(), b = other.getBoundingClientRect();
      const across = Math.min(a.right, b.right) - Math.max(a.left, b.left);
      const down = Math.min(a.bottom, b.bottom) - Math.max(a.top, b.top);
      if (across > 1 && down > 1) {
        problems.push("chart " + (chart.id || chart.closest("[data-name]")?.dataset.name) +
          ": tick labels \u201c" + one.textContent + "\u201d and \u201c" + other.textContent +
          "\u201d overlap by " + across.toFixed(1) + " x " + down.toFixed(1) + " px");
      }
    }));
  });
  // Every column's label is on screen for every row: its header, or the cell's own label.
  document.querySelectorAll("main table").forEach((table, index) => {
    if (!shown(table)) return;
    const headers = [...table.querySelectorAll("thead th")];
    const labels = headers.map((th) => th.textContent.trim());
    table.querySelectorAll("tbody tr").forEach((tr) => {
      if (!shown(tr)) return;
      [...tr.children].forEach((td, column) => {
        const label = labels[column];
        if (!label) return;
        const th = headers[column];
        const thBox = th.getBoundingClientRect();
        const headerSeen = shown(th) && thBox.right <= width + 0.5 && thBox.left >= -0.5;
        const before = getComputedStyle(td, "::before").content;
        const own = (td.dataset.label || "").toLowerCase() === label.toLowerCase() &&
          before !== "none" && before !== "normal" && before !== '""' && shown(td);
        if (!headerSeen && !own) {
          problems.push("table " + (table.id || index) + ": the label \u201c" + label +
            "\u201d of a " + name(tr.children[0]).slice(0, 30) + " row is not on screen");
        }
      });
    });
  });
  return problems;
}"""

pytestmark = needs_chromium
Phone = Watched


@pytest.fixture
def phone(page_opener) -> Callable[..., Phone]:
    return lambda credentials: page_opener(credentials, viewport=PHONE, screen=PHONE,
                                           device_scale_factor=2, is_mobile=True,
                                           has_touch=True)


def settle(phone: Phone, url: str, path: str, status: int = 200) -> None:
    """Load a page, wait for its live connection and what its scripts draw, open every <details>."""
    page = phone.page
    response = page.goto(url + path)
    assert response is not None and response.status == status, (path, response and response.status)
    page.wait_for_selector('#live-state[data-state="connected"]', timeout=15_000)
    if page.locator("main .chart").count():
        page.wait_for_function("() => [...document.querySelectorAll('main .chart')]"
                               ".every(node => node.querySelector('.main-svg'))")
    if path in ("/audit", "/schedules"):
        status = path.strip("/") + "-status"
        page.wait_for_function(f"() => !document.getElementById('{status}')"
                               ".textContent.startsWith('Loading')")
    if path == "/metrics-ui" and page.locator(".metric-summary").count():
        page.wait_for_function("() => [...document.querySelectorAll('.metric-summary')]"
                               ".every(node => node.textContent.length > 0)")
    page.evaluate("() => document.querySelectorAll('main details')"
                  ".forEach(node => { node.open = true; })")
    page.wait_for_timeout(300)  # a push, a redraw


def check(phone: Phone, path: str, width: int = PHONE["width"]) -> None:
    page = phone.page
    assert page.evaluate("window.innerWidth") == width, path
    problems = page.evaluate(LAYOUT_PROBLEMS, width)
    assert problems == [], (path, problems[:12])
    assert phone.csp_violations() == [], path
    assert phone.errors == [], path


def test_every_page_fits_a_phone_with_data(browser, phone, db, engine_uri, db_name, tmp_path: Path,
                                           collector):
    traffic = populate(db, engine_uri, db_name)
    retried = make_dead(engine_uri, db_name, "payments", {"amount": 5}, "card declined " * 12)
    with live_dashboard(engine_uri, db_name, tmp_path,
                        MOPQ_ADMIN_USERS=":".join(ADMIN)) as url:
        watched = phone(ADMIN)
        settle(watched, url, "/login?next=/failed")  # challenged: the browser signs in
        linked = watched.page.evaluate("() => [...document.querySelectorAll('header nav a')]"
                                       ".map(link => link.pathname)")
        assert "/queues" in linked and set(linked) <= set(PAGES), \
            ("pages the navigation links to and this test does not visit", set(linked) - set(PAGES))
        status = watched.page.evaluate("""async (id) => {
          const token = document.querySelector('meta[name="csrf-token"]').content;
          const response = await fetch("/api/failed/retry", {method: "POST",
            headers: {"Content-Type": "application/json", "X-CSRF-Token": token},
            body: JSON.stringify({ids: [id]})});
          return response.status + " " + await response.text();
        }""", retried)
        assert status.startswith("200"), status  # so the audit page has a row
        for path in PAGES + [f"/search?id={traffic.dead_id}"]:
            settle(watched, url, path)
            check(watched, path)
            if path in ("/", "/queues", "/workers", "/audit", "/schedules") \
                    or path.startswith("/search?"):
                assert watched.page.locator("main tbody tr").count() > 0, path
        watched.page.set_viewport_size(SIDEWAYS)
        for path in PAGES:
            settle(watched, url, path)
            check(watched, path, SIDEWAYS["width"])
            if path in ("/queues", "/workers"):  # too wide for 844 px: cards there too
                assert watched.page.locator("main table.data.cards").count() == 1, path


def test_every_page_fits_a_phone_when_empty_and_read_without_signing_in(
        browser, phone, engine_uri, db_name, tmp_path: Path, collector):
    with live_dashboard(engine_uri, db_name, tmp_path,
                        MOPQ_ADMIN_USERS=":".join(ADMIN)) as url:
        watched = phone(None)
        for path in EMPTY_PAGES:
            missing = path == "/queues/orders"  # no such queue: the page says so, with a 404
            settle(watched, url, path, status=404 if missing else 200)
            if missing:  # Chromium logs the page's own 404 status as a failed load
                watched.errors[:] = [e for e in watched.errors if "status of 404" not in e]
            assert "sign in" in watched.page.text_content("header.top"), path
            check(watched, path)


def test_every_page_fits_a_phone_when_the_engine_is_unreachable(browser, phone, db_name,
                                                                 tmp_path: Path):
    uri = f"mongodb://127.0.0.1:{free_port()}/?serverSelectionTimeoutMS=300"
    with live_dashboard(uri, db_name, tmp_path) as url:
        watched = phone(None)
        for path in EMPTY_PAGES:
            settle(watched, url, path)
            # Pages that read nothing themselves learn it from the next push.
            watched.page.wait_for_selector("#engine-banner", state="visible", timeout=10_000)
            if path in ("/audit", "/schedules"):  # their scripts ask the API, which answers 503
                assert "Cannot load" in watched.page.text_content(f"#{path.strip('/')}-status")
                watched.errors[:] = [e for e in watched.errors if "status of 503" not in e]
            check(watched, path)


# The history chart as plotly holds it, and the figure data the page was given.
HISTORY = """() => {
  const chart = document.getElementById("history-chart");
  const layout = chart._fullLayout;
  const given = JSON.parse(chart.dataset.history);
  const x = chart.data[0].x.map((t) => +new Date(t));
  return {range: layout.xaxis.range.map((t) => new Date(t).getTime()),
          axis: layout.xaxis.type,
          given: {window: given.until - given.since, step: given.step, t: given.t},
          kinds: chart.data.map((trace) => trace.type + ":" + (trace.mode || "")),
          sameX: chart.data.every((trace) => trace.x.length === x.length &&
            trace.x.every((t, i) => +new Date(t) === x[i])),
          gaps: [...new Set(x.slice(1).map((t, i) => t - x[i]))],
          first: x[0], last: x[x.length - 1],
          now: Date.now()};
}"""


def test_queue_history_draws_against_time_over_the_window_it_names(
        browser, phone, db, engine_uri, db_name, tmp_path: Path, collector):
    populate(db, engine_uri, db_name)
    with live_dashboard(engine_uri, db_name, tmp_path) as url:
        watched = phone(None)
        for resolution, hours in (("m", 3), ("h", 7 * 24)):
            settle(watched, url, f"/queues/orders?resolution={resolution}")
            chart = watched.page.evaluate(HISTORY)
            start, end = chart["range"]
            assert abs(end - start - hours * 3600e3) < 120e3, (resolution, end - start)
            assert abs(end - chart["now"]) < 120e3, resolution
            assert chart["given"]["window"] == hours * 3600e3, chart["given"]
            assert chart["given"]["t"], resolution  # populate's traffic is in the window
            # Time series: lines (not bars side by side), every trace on the same times,
            # one bucket apart, on a date axis, from the window's start to its end.
            step = chart["given"]["step"]
            assert chart["axis"] == "date", chart["axis"]
            assert all(kind.startswith("scatter:lines") for kind in chart["kinds"]), chart["kinds"]
            assert chart["sameX"], resolution
            assert chart["gaps"] == [step], (resolution, chart["gaps"])
            slack = 1e3  # plotly keeps the range as text
            assert start - step < chart["first"] <= start + slack, (start, chart["first"])
            assert end - step - slack < chart["last"] <= end + slack, (end, chart["last"])
            label = watched.page.text_content('nav.tabs a[aria-current="true"]')
            assert f"last {hours // 24} days" in label if resolution == "h" else \
                "last 3 hours" in label
            check(watched, f"/queues/orders?resolution={resolution}")


def test_activities_say_what_their_rate_and_time_left_mean(browser, phone, db, engine_uri,
                                                            db_name, tmp_path: Path, collector):
    populate(db, engine_uri, db_name)
    with live_dashboard(engine_uri, db_name, tmp_path) as url:
        watched = phone(None)
        settle(watched, url, "/activities")
        text = " ".join(watched.page.text_content("section.activity").split())
        assert "done per second over the last 5 minutes" in text, text
        assert "time left at that rate" in text.lower(), text
        # Nothing of nightly-import was done: no rate, so no time left, and the page says why.
        assert "nothing was done in the last 5 minutes" in text, text
        check(watched, "/activities")


# A row a page's script adds the way a new panel might: cells without their labels.
ADD_UNLABELLED_ROW = """() => {
  const body = document.querySelector("#results tbody");
  const row = body.rows[0].cloneNode(true);
  row.id = "added-by-a-script";
  [...row.cells].forEach((cell) => { delete cell.dataset.label; });
  body.appendChild(row);
}"""


def test_rows_any_script_adds_are_labelled_on_a_phone(browser, phone, db, engine_uri, db_name,
                                                       tmp_path: Path, collector):
    """Labels come from the table's header whatever script adds the rows, so a new
    panel cannot forget them (a table of the queue page's did)."""
    populate(db, engine_uri, db_name)
    with live_dashboard(engine_uri, db_name, tmp_path) as url:
        watched = phone(None)
        settle(watched, url, "/search?q=order_id%3D41")  # rows no push rebuilds
        watched.page.evaluate(ADD_UNLABELLED_ROW)
        watched.page.wait_for_function("() => [...document.getElementById('added-by-a-script')"
                                       ".cells].every((cell) => cell.dataset.label)",
                                       timeout=5_000)
        check(watched, "/search?q=order_id%3D41")
