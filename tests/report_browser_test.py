"""report.html in a real browser: headless Chromium renders its tables and
decodes every embedded image.

Needs Debian's `chromium` and `chromium-driver` (`apt-get install -y chromium
chromium-driver`; .ci/run installs them) and the `selenium` wheel (the test
extra). Without them the test fails and says what is missing: a page that
no browser ever opened is not tested.
"""

import os
import shutil

import pytest

from tests import report_test

# The fake results of report_test: 2 classification and 2 regression runs.
workdir = report_test.workdir

CHROMIUM = os.environ.get("LARY_CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("LARY_CHROMEDRIVER", "/usr/bin/chromedriver")
# No network, no background services, no state from an earlier run.
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu",
                  "--disable-quic", "--no-first-run",
                  "--disable-background-networking",
                  "--disable-component-update", "--disable-sync",
                  "--disable-dev-shm-usage", "--window-size=1280,900")

# Runs in the page once it has loaded: what a reader would see.
_PAGE_STATE = """
document.querySelectorAll('details').forEach(d => { d.open = true; });
const box = e => { const r = e.getBoundingClientRect();
                   return [Math.round(r.width), Math.round(r.height)]; };
return {
  title: document.title,
  charset: document.characterSet,
  tables: [...document.querySelectorAll('table')].map(t => ({
      rows: t.rows.length,
      header: [...t.rows[0].cells].map(c => c.innerText.trim()),
      first: t.rows.length > 1
          ? [...t.rows[1].cells].map(c => c.innerText.trim()) : [],
      box: box(t)})),
  images: [...document.images].map(i => ({
      alt: i.alt, complete: i.complete, natural: [i.naturalWidth,
      i.naturalHeight], box: box(i)})),
  resources: performance.getEntriesByType('resource').map(r => r.name),
};
"""


def _driver(profile_dir):
  """A headless Chromium under chromedriver, or a failure naming the gap."""
  missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not os.access(p, os.X_OK)]
  if missing:
    pytest.fail(f"{' and '.join(missing)} missing: install Debian's browser "
                "with `apt-get install -y chromium chromium-driver` (or set "
                "LARY_CHROMIUM / LARY_CHROMEDRIVER)", pytrace=False)
  try:
    from selenium import webdriver  # pylint: disable=g-import-not-at-top
    from selenium.webdriver.chrome import service  # pylint: disable=g-import-not-at-top
  except ImportError:
    pytest.fail("the selenium package is missing: pip install -e '.[test]'",
                pytrace=False)
  options = webdriver.ChromeOptions()
  options.binary_location = CHROMIUM
  for flag in CHROMIUM_FLAGS:
    options.add_argument(flag)
  options.add_argument(f"--user-data-dir={profile_dir}")
  options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
  # An explicit driver path: Selenium Manager never looks for one online.
  return webdriver.Chrome(options=options,
                          service=service.Service(CHROMEDRIVER))


@pytest.fixture(scope="module")
def page(workdir, tmp_path_factory):  # pylint: disable=redefined-outer-name
  """The rendered report: page state, browser log and a screenshot."""
  _, _, _, html_path = workdir
  # A copy under a fresh folder: the page can reach nothing beside it.
  alone = tmp_path_factory.mktemp("alone") / "report.html"
  shutil.copy(html_path, alone)
  driver = _driver(tmp_path_factory.mktemp("chromium-profile"))
  try:
    driver.set_page_load_timeout(60)
    driver.get(alone.as_uri())
    state = driver.execute_script(_PAGE_STATE)
    log = driver.get_log("browser")
    screenshot = alone.parent / "report.png"
    driver.save_screenshot(str(screenshot))
  finally:
    driver.quit()
  return state, log, screenshot


def test_tables_render_with_their_rows(page):
  state, _, _ = page
  assert state["title"] == "LARY results"
  assert state["charset"] == "UTF-8"
  tables = state["tables"]
  classification, regression = tables[0], tables[1]
  assert classification["header"][:6] == [
      "dataset", "model", "role", "split", "top-1 honest (95% interval)",
      "top-1 upstream-style"]
  assert classification["rows"] == 3  # header + m1 + m2
  # The ± arrives as the character, not as mojibake.
  assert classification["first"][5] == "70.0 ± 14.1 (2 seeds)"
  assert classification["first"][4].startswith("35.0 ± 7.1 (2 seeds) [")
  assert regression["header"][:5] == [
      "dataset", "model", "role", "decoder", "split"]
  assert regression["rows"] == 5  # header + 2 decoders x (seen, unseen)
  assert regression["first"][6] == "0.1500 (1 seed)"
  # Published-only numbers, 2 + 2 seed tables, 2 per-source tables, 2
  # per-dimension tables.
  assert len(tables) == 2 + 1 + 4 + 2 + 2
  per_dimension = [t for t in tables if t["header"][:2] == [
      "selection", "split"]]
  assert [t["rows"] for t in per_dimension] == [5, 5]
  for table in tables:
    width, height = table["box"]
    assert width > 100 and height >= 20 * table["rows"], table


def test_every_image_decodes_and_shows(page):
  state, _, _ = page
  images = state["images"]
  # 3 bar charts, 2 confusion matrices per classification run, 2 trajectory
  # plots per regression run (report_test counts the same in the source).
  assert len(images) == 11
  for image in images:
    width, height = image["natural"]
    assert image["complete"] and width > 100 and height > 100, image
    # Shown at a real size once its <details> is open.
    shown_w, shown_h = image["box"]
    assert shown_w > 100 and shown_h > 100, image


def test_page_is_self_contained_and_quiet(page):
  state, log, screenshot = page
  # Nothing fetched: every image is a data: URI, the CSS inline.
  assert [r for r in state["resources"] if not r.startswith("data:")] == []
  assert [e for e in log if e["level"] in ("SEVERE", "WARNING")] == []
  assert screenshot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
