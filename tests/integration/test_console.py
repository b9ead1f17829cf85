"""The web console in a real browser (Debian's Chromium driven by Playwright) against the real stack: sign in,
create a dataset, upload photos, train, read the chart, try an image and a video, answer the label queue, roll
back a version; user text stays text. Screenshots of each page go to .kashf/screenshots/ (git-ignored)."""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from devtools.stack import Stack
from tests.integration.media import jpeg, photos, variant
from tests.integration.test_text_flow import wait_trained
from tests.integration.texts import DELIVERY, RECOMMEND, TRAIN
from tests.media_video import slideshow
from tests.unit.gateway.harness import sql

pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]

REPO = Path(__file__).resolve().parents[2]
SHOTS = REPO / ".kashf" / "screenshots"
XSS = "<img src=x onerror=alert(1)>"
HTML_TEXT = "<b>bold?</b> <script>alert(2)</script> <img src=x onerror=alert(3)> گوشی خوبیه"
PERSIAN = "این گوشی واقعاً عالیه، باتری‌اش ۲ روز کار می‌کند"
DATASET = "console-photos"
# cat, coffee and rocket are tags; the astronaut's tag carries the hostile title.
TAGS = {"cat": "cat", "coffee": "coffee", "rocket": "rocket", "astronaut": XSS}
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage",
]


def find_chromium() -> str | None:
    """KASHF_CHROMIUM, else a Chromium or Chrome on PATH (Debian's package installs /usr/bin/chromium)."""
    if os.environ.get("KASHF_CHROMIUM"):
        return os.environ["KASHF_CHROMIUM"]
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        if found := shutil.which(name):
            return found
    return None


@dataclass
class Console:
    page: Any
    url: str
    api: httpx.AsyncClient
    dialogs: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    facts: dict[str, Any] = field(default_factory=dict)

    async def shot(self, name: str) -> None:
        SHOTS.mkdir(parents=True, exist_ok=True)
        await self.page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)

    async def shot_of(self, selector: str, name: str) -> None:
        """A screenshot of one part of the page (scrolled into view)."""
        SHOTS.mkdir(parents=True, exist_ok=True)
        await self.page.locator(selector).screenshot(path=str(SHOTS / f"{name}.png"))

    async def go(self, hash_route: str) -> None:
        await self.page.goto(f"{self.url}/ui/{hash_route}")

    def assert_clean(self) -> None:
        """No alert, confirm or prompt ever opened; no script error; nothing the CSP refused."""
        assert self.dialogs == [], self.dialogs
        assert self.errors == [], self.errors


@pytest.fixture(scope="module")
async def ui(stack: Stack, token: str) -> AsyncIterator[Console]:
    try:
        from playwright.async_api import async_playwright
    except ImportError:
        pytest.skip("Playwright is not installed: pip install -e '.[dev]' brings it")
    executable = find_chromium()
    if executable is None:
        pytest.skip("no Chromium found: apt-get install chromium (.ci/run does), or set KASHF_CHROMIUM")
    async with (async_playwright() as p,
                httpx.AsyncClient(base_url=stack.url, headers={"Authorization": f"Token {token}"},
                                  timeout=120.0) as api):
        browser = await p.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        context = await browser.new_context(viewport={"width": 1366, "height": 768})
        context.set_default_timeout(30_000)
        page = await context.new_page()
        console = Console(page, stack.url, api)

        async def on_dialog(dialog: Any) -> None:
            console.dialogs.append(f"{dialog.type}: {dialog.message}")
            await dialog.dismiss()

        def on_console(message: Any) -> None:
            # The network's own 4xx lines are expected (a wrong token on purpose); anything else is a bug.
            if message.type == "error" and not message.text.startswith("Failed to load resource"):
                console.errors.append(message.text)

        page.on("dialog", on_dialog)
        page.on("console", on_console)
        page.on("pageerror", lambda exc: console.errors.append(f"page error: {exc}"))
        try:
            yield console
        finally:
            await browser.close()


def photo_files(directory: Path, name: str, ks: range) -> list[str]:
    out = []
    for k in ks:
        path = directory / f"{name}-{k}.jpg"
        path.write_bytes(jpeg(variant(photos()[name], k)))
        out.append(str(path))
    return out


async def thumbnails_shown(page: Any, root: str) -> None:
    """Every thumbnail under ``root`` came through a blob: URL (the image endpoint needs the token) and decoded;
    a failure names each one that did not, with the reason the page gave (its title) and its state."""
    from playwright.async_api import TimeoutError as PlaywrightTimeout

    try:
        await page.wait_for_function(
            "(root) => [...document.querySelectorAll(root + ' img.thumb')].every(i => i.complete"
            " && i.naturalWidth > 0 && i.src.startsWith('blob:'))", arg=root)
    except PlaywrightTimeout:
        missing = await page.evaluate(
            "(root) => [...document.querySelectorAll(root + ' img.thumb')]"
            ".filter(i => !(i.complete && i.naturalWidth > 0 && i.src.startsWith('blob:')))"
            ".map(i => ({alt: i.alt, reason: i.title, src: i.src.slice(0, 32), complete: i.complete}))", root)
        pytest.fail(f"thumbnails not shown under {root}: {missing}")


async def train_and_wait(page: Any, timeout_s: float = 240) -> None:
    """Click Train; the page polls dataset_info and says when the refit is over (no reload)."""
    from playwright.async_api import expect

    await page.get_by_role("button", name="Train now").click()
    await expect(page.locator("#train-note")).to_contain_text("Queued")
    await expect(page.locator("#train-note")).to_have_text("Training finished: trained.", timeout=timeout_s * 1000)
    await expect(page.locator("#train-state")).to_have_text("trained")


async def expect_confusion(page: Any, info: dict[str, Any]) -> None:
    """The Dataset page's table is dataset_info's (or a version's) confusion: the tags' titles as text, in the
    order of its tag_ids, each count in its cell, the right answers (the matrix's diagonal) highlighted."""
    from playwright.async_api import expect

    confusion = info["confusion"]
    assert confusion is not None
    titles = {t["id"]: t["title"] for t in info["tags"]}
    names = [titles[i] for i in confusion["tag_ids"]]
    table = page.locator("#confusion-table")
    await expect(table).to_be_visible()
    rows = table.locator("tbody tr")
    await expect(rows).to_have_count(len(names) + 1 if confusion["exclusive"] else len(names))
    if confusion["exclusive"]:
        await expect(table.locator("caption")).to_contain_text("held out of the fit")
        await expect(table.locator("thead th[scope=col]")).to_have_text([*names, "unknown"])
        await expect(table.locator("tbody th[scope=row]")).to_have_text([*names, re.compile(r"^no tag")])
        # Titles keep their own direction (a Persian one reads right to left), as everywhere in the console.
        await expect(table.locator("thead th[scope=col] .user[dir=auto]")).to_have_count(len(names))
        await expect(table.locator("tbody th[scope=row] .user[dir=auto]")).to_have_count(len(names))
        for i, counts in enumerate(confusion["matrix"]):
            await expect(rows.nth(i).locator("td")).to_have_text([str(n) for n in counts])
            await expect(rows.nth(i).locator("td").nth(i)).to_have_class(re.compile(r"\bhit\b"))
        await expect(table.locator("td.hit")).to_have_count(len(names) + 1)
    else:
        await expect(table.locator("tbody th[scope=row]")).to_have_text(names)
        for i, counts in enumerate(confusion["counts"]):
            cells = [str(counts[k]) for k in ("tp", "fp", "fn", "tn")] if counts else ["too few reports to evaluate"]
            await expect(rows.nth(i).locator("td")).to_have_text(cells)
    assert await table.locator("img, script, b").count() == 0  # the hostile title stayed text


async def test_sign_in_create_upload_train_and_chart(ui: Console, token: str, tmp_path: Path) -> None:
    from playwright.async_api import expect

    page = ui.page
    await page.goto(f"{ui.url}/ui/")
    await expect(page).to_have_url(f"{ui.url}/ui/#/signin")
    await ui.shot("01-signin")
    await page.get_by_label("API token").fill("not-a-token")
    await page.get_by_role("button", name="Sign in").click()
    await expect(page.get_by_text("That token was refused.")).to_be_visible()
    await page.get_by_label("API token").fill(token)
    await page.get_by_role("button", name="Sign in").click()
    await expect(page.get_by_role("heading", name="Datasets", exact=True)).to_be_visible()
    # The token is kept for this tab only, and never in the address.
    stored = await page.evaluate("() => [sessionStorage.getItem('kashf.token'), localStorage.length, location.href]")
    assert stored[0] == token and stored[1] == 0 and token not in stored[2]

    await page.get_by_label("Name", exact=True).fill(DATASET)
    await page.get_by_label("Title", exact=True).fill("عکس‌های آزمایشی")
    await page.get_by_label("Kind").select_option("image")
    await page.get_by_label("Tags, one per line").fill("\n".join(TAGS.values()))
    await page.get_by_role("button", name="Create dataset").click()
    await expect(page.get_by_text(f"Created {DATASET} with 4 tag(s).")).to_be_visible()
    row = page.locator("table.grid tbody tr", has_text=DATASET)
    await expect(row).to_contain_text("image")
    await expect(row).to_contain_text("untrained")
    await ui.shot("02-datasets")

    await row.get_by_role("link", name=DATASET).click()
    await expect(page.locator("#tags-table")).to_contain_text(XSS)  # the hostile title, as text
    await page.get_by_role("link", name="Items", exact=True).click()
    for name, title in TAGS.items():
        await page.get_by_label("Tag", exact=True).select_option(label=title)
        await page.locator("input[type=file]").set_input_files(photo_files(tmp_path, name, range(4)))
        await expect(page.get_by_text("4 image(s) reported.")).to_be_visible()
        await expect(page.locator("#items > li.item")).to_have_count(4 * (list(TAGS).index(name) + 1))
    # Every thumbnail came through a blob: URL (the image endpoint needs the token) and decoded.
    await expect(page.locator("#items img.thumb")).to_have_count(16)
    await thumbnails_shown(page, "#items")
    await expect(page.locator("#items .report.pos", has_text=XSS)).to_have_count(4)
    await ui.shot("03-items")

    await page.get_by_role("link", name="Dataset", exact=True).click()
    await train_and_wait(page)
    info = (await ui.api.post("/api/dataset_info/", json={"dataset": DATASET})).json()
    assert info["state"] == "trained" and info["report_count"] == 16
    chart = page.locator("figure.chart")
    for tag in info["tags"]:
        bars = chart.locator(".chart-row", has_text=tag["title"]).locator("rect")
        if tag["evaluation"] is not None:
            await expect(bars).to_have_count(3)
            f1 = tag["evaluation"]["f1"]
            await expect(chart.locator(".chart-row", has_text=tag["title"])).to_have_attribute(
                "aria-label", f"{tag['title']}: precision {tag['evaluation']['precision']:.1f}%, "
                f"recall {tag['evaluation']['recall']:.1f}%, F1 {f1:.1f}%")
    ui.facts["tags"] = {t["title"]: t["id"] for t in info["tags"]}
    # One tag per photo, so an exclusive head: the matrix of the 16 photos, each held out of the fit once.
    assert info["confusion"]["exclusive"] and sum(map(sum, info["confusion"]["matrix"])) == 16
    assert [sum(row) for row in info["confusion"]["matrix"]] == [4, 4, 4, 4, 0]
    await expect_confusion(page, info)
    await ui.shot("04-dataset-trained")
    await ui.shot_of("#confusion", "04-confusion-matrix")
    ui.assert_clean()


async def test_a_read_refused_for_rate_or_unavailable_is_asked_again(ui: Console) -> None:
    """A thumbnail whose first read got 429 (with Retry-After) or 503 is asked for again and shown, not left
    broken; a POST refused for rate is sent again too. The refusals come from Playwright's request routing, since
    the stack answers them only under a real overload."""
    from playwright.async_api import Route, expect

    page = ui.page
    seen: dict[str, int] = {}

    async def refuse_first(route: Route) -> None:
        url = route.request.url
        seen[url] = seen.get(url, 0) + 1
        if seen[url] > 1:
            await route.continue_()
        elif len(seen) % 2:
            await route.fulfill(status=429, headers={"Retry-After": "1"},
                                json={"error": "rate_limited", "detail": "over the rate"})
        else:
            await route.fulfill(status=503, json={"error": "unavailable", "detail": "database unavailable"})

    images = re.compile(r".*/api/items/\d+/image$")
    listing = re.compile(r".*/api/list_items/$")
    await page.route(images, refuse_first)
    await page.route(listing, refuse_first)
    try:
        await ui.go(f"#/d/{DATASET}/items")
        await expect(page.locator("#items img.thumb")).to_have_count(16)
        await thumbnails_shown(page, "#items")
    finally:
        await page.unroute(images)
        await page.unroute(listing)
    image_reads = {url: n for url, n in seen.items() if url.endswith("/image")}
    assert len(image_reads) == 16 and set(image_reads.values()) == {2}, seen
    assert [n for url, n in seen.items() if url.endswith("/list_items/")] == [2]
    ui.assert_clean()


async def test_try_an_image_and_a_video(ui: Console, tmp_path: Path) -> None:
    from playwright.async_api import expect

    page = ui.page
    await ui.go(f"#/d/{DATASET}/try")
    # A real drop: a DragEvent whose DataTransfer holds two JPEG files, dispatched on the drop zone.
    cat, rocket = (jpeg(variant(photos()[n], 12)) for n in ("cat", "rocket"))
    transfer = await page.evaluate_handle(
        """([a, b]) => { const t = new DataTransfer();
             t.items.add(new File([new Uint8Array(a)], 'cat-12.jpg', {type: 'image/jpeg'}));
             t.items.add(new File([new Uint8Array(b)], 'rocket-12.jpg', {type: 'image/jpeg'}));
             return t; }""", [list(cat), list(rocket)])
    zone = page.locator("section", has=page.get_by_role("heading", name="Images")).locator(".drop")
    await zone.dispatch_event("dragover", {"dataTransfer": transfer})
    await zone.dispatch_event("drop", {"dataTransfer": transfer})
    results = page.locator("#try-image-out li.result")
    await expect(results).to_have_count(2)
    await expect(results.nth(0).locator(".chip").first).to_contain_text("cat")
    await expect(results.nth(1).locator(".chip").first).to_contain_text("rocket")

    made = slideshow(tmp_path)  # four 1 s shots: astronaut, coffee, chelsea (the cat), rocket
    await page.get_by_label("Minimum frame difference (0–255)").fill("10")
    await page.get_by_label("Sample every (ms)").fill("200")
    video = page.locator("section", has=page.get_by_role("heading", name="Video")).locator("input[type=file]")
    await video.set_input_files(str(made.path))
    frames = page.locator("#timeline li.frame-cell")
    await expect(frames).to_have_count(4, timeout=120_000)
    for i, title in enumerate([XSS, "coffee", "cat", "rocket"]):
        await expect(frames.nth(i).locator(".chip").first).to_contain_text(title)
    drawn = await page.evaluate(
        "() => [...document.querySelectorAll('#timeline canvas')].map(c => {"
        " const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;"
        " let s = 0; for (let i = 0; i < d.length; i += 4) s += d[i] + d[i + 1] + d[i + 2]; return s > 0; })")
    assert drawn == [True] * 4, drawn  # each frame's picture drawn from the dropped file (H.264 in Chromium)
    await page.locator("#timeline").scroll_into_view_if_needed()
    await ui.shot("05-try")
    ui.assert_clean()


async def test_label_queue_one_key_answers(ui: Console, stack: Stack) -> None:
    from playwright.async_api import expect

    page = ui.page
    api = ui.api
    tags = ui.facts["tags"]
    # A label mistake (a coffee cup reported as the cat) for the queue to find as a suspect.
    r = await api.post("/api/report_image_tags/", data={"tag_id": str(tags["cat"])},
                       files=[("image_file", ("oops.jpg", jpeg(variant(photos()["coffee"], 40)), "image/jpeg"))])
    assert r.status_code == 200, r.text
    oops = r.json()[0]["id"]
    await api.post("/api/train_dataset/", json={"dataset": DATASET})
    info = await wait_trained(api, DATASET)
    if not (await api.post("/api/suggest_labels/", json={"dataset": DATASET})).json():
        # The trainer ranked nothing here: give the page three suggestions of the trainer's own shape.
        rocket = (await api.post("/api/list_items/", json={"dataset": DATASET, "tag_id": tags["rocket"],
                                                           "limit": 1})).json()["items"][0]["id"]
        for rank, (item, tag, reason, p) in enumerate([(oops, "cat", "suspect", 0.08),
                                                       (oops, "coffee", "uncertain", 0.45),
                                                       (rocket, "coffee", "uncertain", 0.4)]):
            await sql(stack.database_url,
                      "INSERT INTO suggestion (dataset_id, item_id, tag_id, reason, probability, rank, version) "
                      "SELECT dataset_id, $1, $2, $3, $4, $5, $6 FROM data_item WHERE id = $1",
                      item, tags[tag], reason, p, rank, info.get("version") or 1)
    before = info["report_count"]
    await ui.go(f"#/d/{DATASET}/queue")
    suggestion = page.locator("#queue .suggestion")
    await expect(suggestion).to_be_visible()
    await thumbnails_shown(page, "#queue")
    await ui.shot("06-queue")
    async def current() -> tuple[int, int]:
        return (int(await suggestion.get_attribute("data-item-id") or 0),
                int(await suggestion.get_attribute("data-tag-id") or 0))

    answered = [await current()]
    await page.keyboard.press("n")
    await expect(page.locator("#queue-tally")).to_have_text("This session: 0 yes, 1 no, 0 skipped.")
    answered.append(await current())
    await page.keyboard.press("y")
    await expect(page.locator("#queue-tally")).to_have_text("This session: 1 yes, 1 no, 0 skipped.")
    await page.keyboard.press("s")
    await expect(page.locator("#queue-tally")).to_have_text("This session: 1 yes, 1 no, 1 skipped.")
    # Each answer is a label on the suggested item itself (report_items): no copy is uploaded as a new item.
    listed = (await api.post("/api/list_items/", json={"dataset": DATASET, "limit": 500})).json()["items"]
    reports = {item["id"]: item["reports"] for item in listed}
    assert [answered[0][1], False] in reports[answered[0][0]]
    assert [answered[1][1], True] in reports[answered[1][0]]
    after = (await api.post("/api/dataset_info/", json={"dataset": DATASET})).json()
    assert after["data_count"] == info["data_count"]
    assert after["report_count"] >= before
    ui.assert_clean()


async def test_thresholds_versions_and_rollback(ui: Console, tmp_path: Path) -> None:
    from playwright.async_api import expect

    page = ui.page
    await ui.go(f"#/d/{DATASET}")
    await expect(page.locator("#train-state")).to_have_text("trained")
    info = (await ui.api.post("/api/dataset_info/", json={"dataset": DATASET})).json()
    if "threshold" in info["tags"][0]:
        row = page.locator("#tags-table tr", has_text="coffee")
        await row.get_by_role("spinbutton", name="Threshold for coffee").fill("0.7")
        await row.get_by_role("button", name="Save threshold for coffee").click()
        await expect(row.get_by_text("saved")).to_be_visible()
        info = (await ui.api.post("/api/dataset_info/", json={"dataset": DATASET})).json()
        assert next(t for t in info["tags"] if t["title"] == "coffee")["threshold"] == pytest.approx(0.7)

    await expect(page.locator("#versions-table tbody tr")).not_to_have_count(0)
    first_live = info["version"]
    # One more example makes the next fit a different head; Force promotes it whatever its F1.
    await ui.go(f"#/d/{DATASET}/items")
    await page.get_by_label("Tag", exact=True).select_option(label="cat")
    await page.locator("input[type=file]").set_input_files(photo_files(tmp_path, "cat", range(30, 32)))
    await expect(page.get_by_text("2 image(s) reported.")).to_be_visible()
    await ui.go(f"#/d/{DATASET}")
    await page.get_by_label("Force: promote even if worse").check()
    await train_and_wait(page)
    info = (await ui.api.post("/api/dataset_info/", json={"dataset": DATASET})).json()
    assert info["version"] != first_live
    await expect(page.locator(f"#versions-table tr[data-version='{info['version']}']")).to_contain_text("live")
    # Back to the newest stored version that is not live (retention may have dropped older ones).
    versions = (await ui.api.post("/api/list_versions/", json={"dataset": DATASET})).json()
    target = next(v["version"] for v in versions if v["state"] != "live")
    await page.get_by_role("button", name=f"Make version {target} live").click()
    await expect(page.get_by_text(f"Version {target} is live.")).to_be_visible()
    info = (await ui.api.post("/api/dataset_info/", json={"dataset": DATASET})).json()
    assert info["version"] == target
    await expect(page.locator(f"#versions-table tr[data-version='{target}']")).to_contain_text("live")
    # The page shows the matrix of the version made live: its own, as list_versions has it.
    assert info["confusion"] == next(v["confusion"] for v in versions if v["version"] == target)
    await expect_confusion(page, info)

    # A self-trained version says how many kept inputs joined it. This dataset keeps no input, so the server's
    # answer gets the count of a dataset that does.
    async def self_trained(route: Any) -> None:
        response = await route.fetch()
        listed = await response.json()
        for v in listed:
            v["pseudo_labels"] = 7 if v["version"] == target else 0
        await route.fulfill(response=response, json=listed)

    await page.route("**/api/list_versions/", self_trained)
    await ui.go("#/")
    await ui.go(f"#/d/{DATASET}")
    await expect(page.locator(f"#versions-table tr[data-version='{target}']")).to_contain_text("+7 kept")
    await expect(page.locator("#versions-table")).not_to_contain_text("+0 kept")
    await ui.shot("07-versions")
    ui.assert_clean()


async def test_user_text_renders_as_text_and_reports_can_be_deleted(ui: Console) -> None:
    from playwright.async_api import expect

    page = ui.page
    api = ui.api
    await api.post("/api/create_dataset/", json={"dataset": "console-texts", "title": "نظرها", "kind": "text"})
    tag = (await api.post("/api/create_tag/", json={"dataset": "console-texts", "title": XSS})).json()["tag_id"]
    r = await api.post("/api/report_text_tags/", json=[{"content": HTML_TEXT, "tag_id": tag, "positive": True}])
    assert r.status_code == 200, r.text
    await ui.go("#/d/console-texts/items")
    items = page.locator("#items > li.item")
    await expect(items).to_have_count(1)
    await page.get_by_label("Texts, one per line").fill(PERSIAN)  # pasted, reported from the page
    await page.get_by_role("button", name="Report texts").click()
    await expect(page.get_by_text("1 text(s) reported.")).to_be_visible()
    await expect(items).to_have_count(2)
    html_item = items.filter(has_text="<script>alert(2)</script>")
    await expect(html_item.locator(".text-item")).to_have_text(HTML_TEXT)
    await expect(html_item.locator(".report")).to_contain_text(XSS)
    assert await page.locator("main b, main script, img[src='x']").count() == 0
    direction = await items.filter(has_text="باتری").locator(".text-item").evaluate(
        "el => getComputedStyle(el).direction")
    assert direction == "rtl"
    await ui.shot("08-items-text")

    await html_item.get_by_role("button", name=f'Delete report "{XSS}" of item').click()
    await expect(html_item.locator(".report")).to_have_count(0)
    listed = (await api.post("/api/list_items/", json={"dataset": "console-texts"})).json()["items"]
    assert {i["content"]: i["reports"] for i in listed} == {HTML_TEXT: [], PERSIAN: [[tag, True]]}

    # Try it: the texts come back with their tags, the hostile one as text.
    await ui.go("#/d/console-texts/try")
    await page.get_by_label("Texts, one per line").fill(f"{HTML_TEXT}\n{PERSIAN}")
    await page.get_by_role("button", name="Tag texts").click()
    results = page.locator("#try-text-out li")
    await expect(results.locator(".text-item")).to_have_text([HTML_TEXT, PERSIAN])
    await expect(results.nth(0).locator(".chip").first).to_be_visible()
    assert await page.locator("main b, main script, img[src='x']").count() == 0
    await ui.shot("10-try-text")
    ui.assert_clean()


async def test_a_multi_label_dataset_shows_each_tags_counts(ui: Console) -> None:
    """Items reported with two tags make a multi-label head: the page shows each tag's true and false positives
    and negatives, under its title (a Persian one right to left)."""
    api, name = ui.api, "console-multi"
    await api.post("/api/create_dataset/", json={"dataset": name, "title": "چندبرچسبی", "kind": "text"})
    tags = {t: (await api.post("/api/create_tag/", json={"dataset": name, "title": t})).json()["tag_id"]
            for t in (RECOMMEND, DELIVERY)}
    reports = [{"content": text, "tag_id": tags[tag], "positive": True}
               for tag in (RECOMMEND, DELIVERY) for text in TRAIN[tag][:4]]
    # Praise for the product and its delivery at once: each of these is reported for both tags.
    both = ["عالیه، پیشنهاد میکنم؛ ارسال هم یک روزه بود", "Great phone, and it arrived a day early.",
            "خرید خوبی بود و پیک سریع آورد", "Worth buying, delivery was fast too."]
    reports += [{"content": text, "tag_id": tag, "positive": True} for text in both for tag in tags.values()]
    assert (await api.post("/api/report_text_tags/", json=reports)).status_code == 200
    await api.post("/api/train_dataset/", json={"dataset": name})
    info = await wait_trained(api, name)
    assert info["confusion"] is not None and not info["confusion"]["exclusive"]
    for counts in info["confusion"]["counts"]:  # every item counted once per tag
        assert counts is not None and sum(counts.values()) == 12 and counts["tp"] + counts["fn"] == 8
    await ui.go(f"#/d/{name}")
    await expect_confusion(ui.page, info)
    direction = await ui.page.locator("#confusion-table tbody th .user").first.evaluate(
        "el => getComputedStyle(el).direction")
    assert direction == "rtl"
    await ui.shot_of("#confusion", "11-confusion-multi-label")
    ui.assert_clean()


async def test_missing_endpoints_and_a_refused_token_are_messages(ui: Console) -> None:
    """An older gateway (no list_versions, list_items or suggest_labels: 404 "no such endpoint") gets a
    sentence in the page, not a broken one; a token refused mid-session leads back to sign-in."""
    from playwright.async_api import expect

    page = ui.page
    missing = {"status": 404, "content_type": "application/json",
               "body": '{"error": "not_found", "detail": "no such endpoint"}'}
    for name in ("list_versions", "list_items", "suggest_labels"):
        await page.route(f"**/api/{name}/", lambda route: route.fulfill(**missing))
    try:
        await ui.go(f"#/d/{DATASET}")
        await expect(page.get_by_text("This server does not offer list_versions yet.")).to_be_visible()
        await expect(page.locator("figure.chart")).to_be_visible()
        await ui.go(f"#/d/{DATASET}/items")
        await expect(page.get_by_text("This server does not offer list_items yet.")).to_be_visible()
        await expect(page.get_by_role("heading", name="Report examples")).to_be_visible()
        await ui.go(f"#/d/{DATASET}/queue")
        await expect(page.get_by_text("This server does not offer suggest_labels yet.")).to_be_visible()
        await ui.shot("09-missing-endpoint")
    finally:
        await page.unroute_all()

    await page.evaluate("() => sessionStorage.setItem('kashf.token', 'revoked-or-wrong')")
    await ui.go("#/datasets")
    await expect(page).to_have_url(f"{ui.url}/ui/#/signin")
    await expect(page.locator("#status")).to_have_text("The token was refused: sign in again.")
    assert await page.evaluate("() => sessionStorage.getItem('kashf.token')") is None
    ui.assert_clean()
