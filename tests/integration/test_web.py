"""The web page at `/` in a real headless Chromium against the live stack: upload with progress, jobs and
per-document outcomes, a question's ranked passages with their scores, screenshots that really rendered,
server strings shown as text (never markup), and problem details shown to the user.

Chromium is Debian's package (`make browser`); Playwright only drives it and never downloads a browser.
"""

from __future__ import annotations

import io
import os
import shutil
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image
from playwright.sync_api import (
    BrowserContext,
    ConsoleMessage,
    Locator,
    Page,
    expect,
)

from tests.integration.chromium import VIEWPORT, chromium
from tests.integration.conftest import KEYS, Stack

JOB_TIMEOUT_MS = 180_000
XSS = '<img src=x onerror="window.__xss=1">'


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BrowserContext]:
    with chromium(tmp_path_factory.mktemp("chromium-profile")) as context:
        yield context


@pytest.fixture
def page(browser: BrowserContext, stack: Stack) -> Iterator[Page]:
    """The page, opened fresh; fails the test on a script error or a Content-Security-Policy violation."""
    page = browser.new_page()
    page.set_default_timeout(30_000)
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(f"page error: {exc}"))

    def console(message: ConsoleMessage) -> None:
        if message.type == "error" and "Failed to load resource" not in message.text:
            errors.append(f"console: {message.text}")  # a CSP violation is logged here

    page.on("console", console)
    response = page.goto(stack.url + "/")
    assert response is not None and response.status == 200
    assert "default-src 'self'" in response.headers["content-security-policy"]
    assert response.headers["x-content-type-options"] == "nosniff"
    yield page
    page.close()
    assert not errors, errors


def _settings(page: Page, key: str, collection: str) -> None:
    page.fill("#api-key", key)
    page.fill("#collection", collection)
    page.press("#api-key", "Enter")  # stores the key and lists the collections


def _write_upload(folder: Path) -> list[Path]:
    """Two small files and a zip of two more: four documents."""
    tides = folder / "tides.txt"
    tides.write_text("Tides are the rise and fall of sea levels caused by the Moon and the Sun.")
    espresso = folder / "espresso.md"
    espresso.write_text("# Espresso\n\nEspresso is coffee brewed by forcing hot water through ground beans.")
    archive = folder / "more.zip"
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("volcano.txt", "Volcanoes erupt when molten rock rises through the crust.")
        zf.writestr(
            "glaciers.md", "# Glaciers\n\nGlaciers are rivers of ice that carve valleys as they move."
        )
    archive.write_bytes(buffer.getvalue())
    return [tides, espresso, archive]


def _ask(page: Page, question: str, top_k: int) -> Locator:
    page.fill("#question", question)
    page.fill("#top-k", str(top_k))
    page.click("#ask-button")
    passages = page.locator("#results li.passage")
    expect(passages.first).to_be_visible(timeout=JOB_TIMEOUT_MS)
    return passages


def _assert_rendered(png: Path, width: float, height: float) -> None:
    """The PNG has the element's size and real content: many colours, not one flat background."""
    with Image.open(png) as image:
        rgb = image.convert("RGB")
    assert abs(rgb.width - width) <= 2 and abs(rgb.height - height) <= 2, (rgb.size, width, height)
    colours = rgb.getcolors(maxcolors=1 << 20) or []
    assert len(colours) > 50, f"{png} has only {len(colours)} colours: it looks blank"
    background = max(count for count, _ in colours)
    assert background < 0.97 * rgb.width * rgb.height, f"{png} is almost one flat colour"


def _upload_and_follow(page: Page, files: list[Path]) -> None:
    """Upload through the page: the bar reaches 100 % of the bytes, the job ends, each document is listed."""
    page.set_input_files("#files", [str(path) for path in files])
    expect(page.locator("#dropzone .hint")).to_contain_text("3 file(s) chosen")
    page.click("#upload-button")
    expect(page.locator("#upload-status")).to_contain_text("100 %", timeout=30_000)
    bar = page.locator("#upload-progress")
    assert bar.evaluate("bar => bar.value === bar.max && bar.max > 1")  # bytes, not a placeholder
    job = page.locator("li.job-ingest").first
    expect(job.locator(".job-state")).to_have_text("succeeded", timeout=JOB_TIMEOUT_MS)
    expect(job.locator(".counts")).to_contain_text("4 / 4 documents")
    rows = job.locator("tbody tr")
    expect(rows).to_have_count(4)
    listed = {rows.nth(i).locator(".doc-id").inner_text(): rows.nth(i) for i in range(4)}
    assert set(listed) == {"tides.txt", "espresso.md", "more.zip/volcano.txt", "more.zip/glaciers.md"}
    for row in listed.values():
        expect(row.locator(".state")).to_have_text("succeeded")
    expect(page.locator("#collection-info")).to_contain_text("4 documents")


def _screenshot_rendered(page: Page, element: Locator, path: Path) -> None:
    """The element is visible with a real size, and its screenshot is not blank.

    The box is measured on both sides of the screenshot: a panel still filling in (a job's document
    table arrives just after its state) must not pass for a rendering bug, so it is shot again.
    """
    expect(element).to_be_visible()
    for _ in range(5):
        box = element.bounding_box()
        element.screenshot(path=path)
        if box is not None and box == element.bounding_box():
            break
        page.wait_for_timeout(200)
    assert box is not None and box["width"] > 100 and box["height"] > 100, box
    _assert_rendered(path, box["width"], box["height"])


def test_upload_follow_ask_and_screenshots(page: Page, stack: Stack, tmp_path: Path) -> None:
    _settings(page, KEYS["main"][0], "web-demo")
    _upload_and_follow(page, _write_upload(tmp_path))

    passages = _ask(page, "Why does the sea rise and fall?", 3)
    expect(passages).to_have_count(3)
    first = passages.first
    expect(first.locator(".rank")).to_have_text("1")
    expect(first.locator(".source")).to_contain_text("tides.txt")
    expect(first.locator(".text")).to_contain_text("rise and fall of sea levels")
    stages = first.locator(".score dt").all_inner_texts()
    assert {"dense", "fusion"} <= set(stages), stages
    for value in first.locator(".score dd").all_inner_texts():
        float(value)  # every stage's score is a number
    meta = page.locator("#answer-meta").inner_text()
    assert "3 passages" in meta and "embed" in meta and " ms" in meta
    expect(page.locator("li.job-ask").first.locator(".job-state")).to_have_text("succeeded")

    shots = stack.logs / "screenshots"
    shots.mkdir(parents=True, exist_ok=True)
    _screenshot_rendered(page, page.locator("#results"), shots / "web-results.png")
    page.evaluate("window.scrollTo(0, 0)")
    page.screenshot(path=shots / "web.png")
    _assert_rendered(shots / "web.png", VIEWPORT["width"], VIEWPORT["height"])
    if target := os.environ.get("QUARRY_WEB_SCREENSHOT"):  # refreshes docs/web.png
        shutil.copyfile(shots / "web.png", target)


def test_server_strings_are_shown_as_text_never_markup(page: Page, stack: Stack) -> None:
    document = {
        "id": "<b>pelican-id</b>",
        "title": XSS,
        "text": f"Pelicans scoop fish with their pouches. {XSS} <script>window.__xss=2</script>",
        "metadata": {"note": XSS},
    }
    job = stack.run("/api/v1/documents", json={"collection": "web-xss", "documents": [document]})
    assert job["state"] == "succeeded", job

    _settings(page, KEYS["main"][0], "web-xss")
    passage = _ask(page, "How do pelicans catch fish?", 1).first
    expect(passage.locator(".title")).to_have_text(XSS)
    expect(passage.locator(".source")).to_contain_text("<b>pelican-id</b>")
    expect(passage.locator(".text")).to_contain_text(f"{XSS} <script>window.__xss=2</script>")
    expect(passage.locator(".metadata")).to_contain_text(XSS)
    assert page.locator("#results img, #results script, #results b").count() == 0
    assert page.evaluate("typeof window.__xss") == "undefined"


def test_problems_are_shown_with_title_and_detail(page: Page, stack: Stack, tmp_path: Path) -> None:
    _settings(page, "qk_wrong-key", "web-demo")
    problem = page.locator("#settings-problem")
    expect(problem).to_be_visible()
    expect(problem.locator(".problem-title")).to_have_text("Unauthorized (401)")
    expect(problem.locator(".problem-detail")).to_have_text("the API key is not valid")

    page.fill("#question", "anything")
    page.click("#ask-button")
    expect(page.locator("#ask-problem .problem-detail")).to_have_text("the API key is not valid")

    _settings(page, KEYS["a"][0], "b-docs")  # a key bound to another tenant's collection
    page.fill("#question", "anything")
    page.click("#ask-button")
    expect(page.locator("#ask-problem .problem-title")).to_have_text("Forbidden (403)")
    expect(page.locator("#ask-problem .problem-detail")).to_contain_text("may not use collection 'b-docs'")

    (tmp_path / "empty.txt").write_bytes(b"")
    page.set_input_files("#files", str(tmp_path / "empty.txt"))
    page.fill("#collection", "a-docs")
    page.click("#upload-button")
    upload_problem = page.locator("#upload-problem")
    expect(upload_problem.locator(".problem-title")).to_contain_text("(422)")
    expect(upload_problem.locator(".problem-detail")).to_contain_text("empty.txt: the file is empty")
    page.screenshot(path=stack.logs / "web-problems.png")  # for a person to look at


def test_failed_documents_show_their_reason_and_can_be_retried(
    page: Page, stack: Stack, tmp_path: Path
) -> None:
    (tmp_path / "broken.pdf").write_bytes(b"%PDF-1.7\nthis is not a PDF body\n")  # passes the API's check
    (tmp_path / "fine.txt").write_text("Owls hunt at night with silent feathers.")
    _settings(page, KEYS["main"][0], "web-mixed")
    page.set_input_files("#files", [str(tmp_path / "broken.pdf"), str(tmp_path / "fine.txt")])
    page.click("#upload-button")
    job = page.locator("li.job-ingest").first
    expect(job.locator(".job-state")).to_have_text("succeeded", timeout=JOB_TIMEOUT_MS)
    expect(job.locator(".counts")).to_contain_text("1 failed")
    failed = job.locator("tbody tr", has_text="broken.pdf")
    expect(failed.locator(".state")).to_have_text("failed")
    expect(failed.locator(".reason")).to_contain_text("broken.pdf")

    job.get_by_role("button", name="Retry failed").click()
    retry = page.locator("li.job-ingest").first
    expect(retry.locator(".job-label")).to_contain_text("retry of")
    expect(retry.locator(".job-state")).to_have_text("failed", timeout=JOB_TIMEOUT_MS)
    expect(retry.locator(".job-error")).to_contain_text("no document could be ingested")
    retried = retry.locator("tbody tr", has_text="broken.pdf")  # the table arrives after the state
    expect(retried.locator(".state")).to_have_text("failed")
    shots = stack.logs / "screenshots"
    shots.mkdir(parents=True, exist_ok=True)
    _screenshot_rendered(page, page.locator("#jobs"), shots / "web-failures.png")


def test_jobs_are_followed_by_their_events_or_by_long_poll_where_none_stream(
    page: Page, stack: Stack
) -> None:
    """The page reads each job's Server-Sent Events (fetch with the key in a header, which EventSource
    cannot send); where the route does not stream (an older server, a proxy), it long-polls instead."""
    requested: list[str] = []
    page.on("request", lambda request: requested.append(request.url))
    _settings(page, KEYS["main"][0], "web-demo")
    _ask(page, "What causes tides?", 2)
    job = page.locator("li.job-ask").first
    expect(job.locator(".job-state")).to_have_text("succeeded")
    streamed = job.get_attribute("data-job-id")
    assert f"{stack.url}/api/v1/jobs/{streamed}/events" in requested, requested
    assert not [url for url in requested if f"/jobs/{streamed}?wait=" in url]

    page.route(
        "**/events", lambda route: route.fulfill(status=404, content_type="text/html", body="Not Found")
    )
    _ask(page, "What is espresso?", 2)
    polled_job = page.locator("li.job-ask").first
    expect(polled_job).not_to_have_attribute("data-job-id", streamed or "")
    expect(polled_job.locator(".job-state")).to_have_text("succeeded", timeout=JOB_TIMEOUT_MS)
    polled = polled_job.get_attribute("data-job-id")
    assert [url for url in requested if f"/jobs/{polled}?wait=" in url], requested
