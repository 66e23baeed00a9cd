"""report.html as a reader's browser shows it: headless Chromium loads a finished sweep's
report, and the page must load without a console error or a broken image, open on the
verdict, and hold every table and figure the report wrote, none running past the page's
column. The screenshot is kept in the
test's tmp folder for a person to look at.

Needs Debian's `chromium-headless-shell` (`.ci/run` installs it); without it these tests fail
with the one line that installs it."""

import pytest

from tests.support import browser

pytestmark = pytest.mark.slow  # a browser process; the sweep and its report are shared fixtures


def _open(html_file, screenshot) -> browser.Page:
    if browser.binary() is None:
        pytest.fail(browser.INSTALL, pytrace=False)
    return browser.open_page(html_file, screenshot)


def test_the_sweep_report_renders_whole_in_a_browser(sweep_report, tmp_path):
    report = sweep_report
    source = report.html.read_text()
    page = _open(report.html, tmp_path / "report.png")
    facts = page.facts
    assert page.errors == []
    assert facts["broken"] == [] and facts["overflowing"] == []
    assert facts["firstSection"] == "verdict" and facts["headings"][0] == "Verdict"
    assert "Memorization and utility by combination" in facts["headings"]
    # Everything the report wrote is on the page: its figures, and one table per table
    # heading (the main table, then the audits' own tables).
    assert facts["figures"] == facts["images"] == len(report.figures) > 0
    assert facts["tables"] == source.count("<table>") == len(facts["headings"]) - 1
    assert page.screenshot.read_bytes().startswith(b"\x89PNG") and facts["height"] > 2000


def test_the_check_sees_a_broken_image_and_a_console_error(tmp_path):
    """The checks above can fail: a page with both faults shows both."""
    page_file = tmp_path / "broken.html"
    page_file.write_text(
        '<!DOCTYPE html><html><body><figure><img alt="gone" src="data:image/png;base64,AAAA">'
        "</figure><script>console.error('drawn wrong')</script></body></html>")
    page = _open(page_file, tmp_path / "broken.png")
    assert page.facts["broken"] == ["gone"]
    assert any("drawn wrong" in e for e in page.errors)
