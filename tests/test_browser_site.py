"""The built site in headless Chromium: from file://, alone in another folder, and from
an HTTP server under a sub-path; tooltips, search, keyboard, and hostile tokens that
must stay text."""

from __future__ import annotations

import functools
import http.server
import json
import math
import random
import shutil
import struct
import threading
from decimal import Decimal
from pathlib import Path

import numpy as np
import pytest
from chromium import assert_clean, available, chromium, open_page
from site_fixtures import DictSpec, decoded_examples, page_json, shown_change, site_config, write_cache

from sitegen.render import render_site

pytestmark = pytest.mark.browser
if not available():
    pytest.skip("needs Debian chromium and chromium-driver", allow_module_level=True)

from selenium.webdriver.common.action_chains import ActionChains  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.common.keys import Keys  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

HOSTILE_TOKEN = "</script><img src=x onerror=alert(1)>"
NOTE = '<img src=x onerror="window.__pwned=1"> <script>window.__pwned=1</script> **ok**'


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("browser")
    (root / "notes.yaml").write_text(f"sae:\n  1: {json.dumps(NOTE)}\n")
    write_cache(
        root / "cache",
        [
            DictSpec(feature_ids=(0, 1, 2, 7)),
            DictSpec(name="dead", feature_ids=(0,), dead=frozenset({0})),
            DictSpec(name="exact", feature_ids=(1,), effects="exact"),
        ],
    )
    return render_site(root / "cache", site_config(root, notes="notes.yaml"), root / "site")


@pytest.fixture(scope="module")
def driver(tmp_path_factory):
    with chromium(tmp_path_factory.mktemp("chromium-profile"), logging=True) as drv:
        yield drv


def test_index_search_and_dead_dictionary(driver, site):
    open_page(driver, (site / "index.html").as_uri())
    rows = driver.find_elements(By.CSS_SELECTOR, "#rows tr")
    assert len(rows) == 6
    assert "every built feature of this dictionary is dead" in driver.find_element(By.TAG_NAME, "body").text
    search = driver.find_element(By.ID, "search")
    search.send_keys("#7")
    assert [r.find_element(By.TAG_NAME, "a").text for r in driver.find_elements(By.CSS_SELECTOR, "#rows tr")] == ["7"]
    search.clear()
    search.send_keys("7")
    assert "7" in [r.find_element(By.TAG_NAME, "a").text for r in driver.find_elements(By.CSS_SELECTOR, "#rows tr")]
    data = index_data(site)
    token = data["tokens"][data["top"][2][0]].strip()  # a top token of feature 2
    search.clear()
    search.send_keys(token)
    hits = [r.find_element(By.TAG_NAME, "a").text for r in driver.find_elements(By.CSS_SELECTOR, "#rows tr")]
    assert "2" in hits
    assert_clean(driver)


def index_data(site: Path) -> dict:
    return json.loads(
        (site / "assets" / "index-data.js").read_text().removeprefix("window.SITEGEN_INDEX=").strip()[:-1]
    )


def shown_rows(driver, data: dict) -> list[int]:
    """Index (into the index data) of each listed row, in order, from its link."""
    where = {f"features/{d}/{i}.html": k for k, (d, i) in enumerate(zip(data["d"], data["id"]))}
    return [
        where[a.get_attribute("href").split("/site/", 1)[1]]
        for a in driver.find_elements(By.CSS_SELECTOR, "#rows tr td:first-child a")
    ]


def test_index_sorts_and_filters(driver, site):
    open_page(driver, (site / "index.html").as_uri())
    data = index_data(site)
    assert sorted(shown_rows(driver, data)) == list(range(len(data["id"])))
    header = driver.find_element(By.CSS_SELECTOR, 'th[data-sort="max"]')
    header.click()  # ascending, ties by index order
    assert shown_rows(driver, data) == sorted(range(len(data["id"])), key=lambda k: (data["max"][k], k))
    header.click()
    assert shown_rows(driver, data) == sorted(range(len(data["id"])), key=lambda k: (data["max"][k], k))[::-1]
    driver.find_element(By.CSS_SELECTOR, 'th[data-sort="density"]').click()
    by_density = shown_rows(driver, data)
    assert [data["density"][k] for k in by_density] == sorted(data["density"])
    lo, hi = sorted(x * 100 for x in data["density"] if x > 0)[:2]  # keep the two least dense live features
    driver.find_element(By.ID, "dmin").send_keys(repr(lo))
    driver.find_element(By.ID, "dmax").send_keys(repr(hi))
    kept = shown_rows(driver, data)
    assert kept == [k for k in by_density if lo <= data["density"][k] * 100 <= hi] and len(kept) >= 2
    for box in ("dmin", "dmax"):
        driver.find_element(By.ID, box).clear()
    driver.find_element(By.CSS_SELECTOR, '#dict option[value="2"]').click()  # the "exact" dictionary
    assert [data["d"][k] for k in shown_rows(driver, data)] == [2] * data["d"].count(2)
    assert data["dicts"][2] == "exact"
    assert_clean(driver)


def js_number(x: float) -> str:
    """JS ``String(x)`` for the numbers pages show (no exponent from 1e-7 up to 1e21)."""
    if x == 0 or 1e-7 <= abs(x) < 1e21:
        return np.format_float_positional(x, trim="-")
    mantissa, exponent = repr(x).split("e")
    return f"{mantissa}e{int(exponent):+d}"


def float24(x: float) -> float:
    """``x`` as a page's 24-bit float (float32 less its low byte, as embed.packed_floats writes it)."""
    return struct.unpack(">f", struct.pack(">f", x)[:3] + b"\0")[0]


def change_cases(rng: random.Random, n: int) -> list[tuple[float, int]]:
    """(value, places) pairs of four kinds: changes as ``changes`` interpolates them, short
    decimals (near the halves where rounding twice goes wrong), exact binary halves, any double."""
    cases = []
    for k in range(n):
        sign, e = rng.choice((-1, 1)), rng.randint(-9, 8)
        if k % 4 == 0:
            ends = [float24(rng.choice((-1, 1)) * 10 ** rng.uniform(-6, 3)) for _ in range(2)]
            t = rng.random()
            v = ends[0] + t * (ends[1] - ends[0])
            big = max(map(abs, ends))
            cases.append((v, min(max(math.floor(4.82 - math.log10(big)), 0), 100) if big else 0))
            continue
        if k % 4 == 1:
            digits = rng.randint(1, 8)
            v = sign * float(Decimal(rng.randrange(10 ** (digits - 1), 10**digits)).scaleb(e - digits + 1))
        elif k % 4 == 2:
            v = sign * (2 * rng.randrange(10**4) + 1) / 2 ** rng.randint(1, 12)
            e = math.floor(math.log10(abs(v)))
        else:
            v = sign * 10 ** rng.uniform(-9, 9)
            e = math.floor(math.log10(abs(v)))
        cases.append((v, rng.choice((rng.randint(max(0, 1 - e), max(0, 6 - e)), rng.randint(0, 100)))))
    return cases


def page_function(html: str, name: str) -> str:
    """The source of the function ``name`` in a page's inlined script (no brace in its strings)."""
    start = html.index(f"function {name}(")
    depth, i = 0, html.index("{", start)
    while True:
        depth += {"{": 1, "}": -1}.get(html[i], 0)
        if depth == 0:
            return html[start : i + 1]
        i += 1


def test_log_prob_changes_are_rounded_once(driver, site):
    """The page's own ``shownChange``, run in Chromium on many fresh values, against a
    correctly rounded reference."""
    fixed = [
        (-1.15555, 4, -1.156),
        (-1.31444, 4, -1.314),
        (-1.15554, 4, -1.156),
        (-1.31446, 4, -1.314),  # rounded twice: -1.155, -1.315
        (0.125, 2, 0.13),
        (-2.5, 0, -3.0),
        (12345.0, 0, 12350.0),
        (9.99996, 4, 10.0),
        (-4e-5, 4, 0.0),
    ]
    assert [shown_change(v, places) for v, places, _ in fixed] == [want for *_, want in fixed]
    seed = random.randrange(10**9)
    cases = [(v, places) for v, places, _ in fixed] + change_cases(random.Random(seed), 20000)
    source = page_function((site / "features" / "0" / "2.html").read_text(encoding="utf-8"), "shownChange")
    open_page(driver, "about:blank")
    got = driver.execute_script(
        source + "\nreturn arguments[0].map(function (c) { return shownChange(c[0], c[1]); });", cases
    )
    wrong = [
        (v, places, g, shown_change(v, places))
        for (v, places), g in zip(cases, got)
        if float(g) != shown_change(v, places)
    ]
    assert len(got) == len(cases) and not wrong, (
        f"seed={seed}: {len(wrong)} of {len(cases)} (value, places, shown, correct) differ, e.g. {wrong[:5]}"
    )


@pytest.mark.parametrize("page", ["features/0/2.html", "features/2/1.html"], ids=["direct", "listed"])
def test_tooltip_shows_the_page_numbers(driver, site, page):
    """Hovering each token of the first example shows the numbers the page JSON holds (the
    two hover encodings decoded as in site_fixtures.decoded_examples, which the render tests
    compare with the FeatureData)."""
    data = page_json((site / page).read_text(encoding="utf-8"))
    assert ("h" in data) == page.startswith("features/0/")
    first = decoded_examples(data)[0][0]
    open_page(driver, (site / page).as_uri())
    spans = driver.find_elements(By.CSS_SELECTOR, ".ex-group .ex")[0].find_elements(By.CSS_SELECTOR, ".t")
    assert "sel" in spans[first["pos"] - first["start"]].get_attribute("class")
    tip = driver.find_element(By.ID, "tip")
    for k, span in enumerate(spans):
        ActionChains(driver).move_to_element(span).perform()
        WebDriverWait(driver, 5).until(lambda d: tip.is_displayed())
        assert f"activation: {js_number(first['acts'][k])}" in tip.text
        hover = first["hovers"][k]
        if hover is None:
            assert "no loss effect" in tip.text
            continue
        loss, up, up_values, down, down_values = hover
        assert f"loss effect: {'+' if loss > 0 else ''}{js_number(loss)}" in tip.text
        assert "change in next-token loss when this feature is removed" in tip.text
        rows = [
            [td.text for td in tr.find_elements(By.TAG_NAME, "td")]
            for tr in tip.find_elements(By.CSS_SELECTOR, "table tr")[1:]
        ]
        signed = [f"{'+' if v > 0 else ''}{js_number(v)}" for v in up_values + down_values]
        assert rows == [[a, b, c, d] for a, b, c, d in zip(up, signed[: len(up)], down, signed[len(up) :])], k
    marker = driver.find_element(By.CSS_SELECTOR, "#act-hist line")
    assert marker.get_attribute("visibility") == "visible"
    assert len(driver.find_elements(By.CSS_SELECTOR, "#act-hist rect")) == len(data["act_hist"][1])
    assert_clean(driver)


def test_keyboard_navigation(driver, site):
    open_page(driver, (site / "features" / "0" / "2.html").as_uri())
    driver.find_element(By.TAG_NAME, "body").send_keys(Keys.ARROW_RIGHT)
    WebDriverWait(driver, 5).until(lambda d: d.current_url.endswith("/features/0/7.html"))
    driver.find_element(By.TAG_NAME, "body").send_keys(Keys.ARROW_LEFT)
    WebDriverWait(driver, 5).until(lambda d: d.current_url.endswith("/features/0/2.html"))
    driver.find_element(By.TAG_NAME, "body").send_keys("/")
    WebDriverWait(driver, 5).until(lambda d: d.current_url.endswith("/index.html#search"))
    WebDriverWait(driver, 5).until(lambda d: d.execute_script("return document.activeElement.id") == "search")
    assert_clean(driver)


def test_hostile_tokens_and_notes_stay_text(driver, site):
    pages = [
        p
        for p in sorted((site / "features" / "0").glob("*.html"))
        if HOSTILE_TOKEN in page_json(p.read_text(encoding="utf-8"))["tokens"]
    ]
    assert pages, "the fixture puts the hostile token on some page"
    open_page(driver, pages[0].as_uri())
    texts = driver.execute_script("return Array.from(document.querySelectorAll('.t'), s => s.textContent)")
    assert HOSTILE_TOKEN in texts
    assert driver.find_elements(By.CSS_SELECTOR, "main img, main iframe, main script") == []
    assert_clean(driver)
    open_page(driver, (site / "features" / "0" / "1.html").as_uri())  # the note's payloads
    assert driver.find_element(By.CSS_SELECTOR, ".note strong").text == "ok"
    assert driver.find_elements(By.CSS_SELECTOR, ".note script, .note [onerror]") == []
    assert_clean(driver, allowed="/features/0/x ")  # the note's (sanitised) <img src=x> is a broken image


def test_a_page_copied_alone_renders_fully(driver, site, tmp_path):
    page = site / "features" / "0" / "2.html"
    alone = tmp_path / "elsewhere" / "copy.html"
    alone.parent.mkdir()
    shutil.copy(page, alone)
    data = page_json(page.read_text(encoding="utf-8"))
    open_page(driver, alone.as_uri())
    n_tokens = sum(len(ex[3]) for group in data["groups"] for ex in group)
    assert len(driver.find_elements(By.CSS_SELECTOR, ".t[data-r]")) == n_tokens
    assert len(driver.find_elements(By.CSS_SELECTOR, "#logit-hist rect")) == len(data["logit_hist"][1])
    assert driver.find_element(By.ID, "logit-top").is_displayed()
    assert_clean(driver)


def test_served_under_a_sub_path(driver, site, tmp_path):
    shutil.copytree(site, tmp_path / "repo")
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path))
    handler.log_message = lambda *args: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        base = f"http://127.0.0.1:{server.server_address[1]}/repo/"
        open_page(driver, base + "index.html")
        driver.find_element(By.CSS_SELECTOR, "#rows a").click()
        WebDriverWait(driver, 5).until(lambda d: d.current_url == base + "features/0/0.html")
        assert driver.find_elements(By.CSS_SELECTOR, ".t[data-r]")
        driver.find_element(By.LINK_TEXT, "About").click()
        WebDriverWait(driver, 5).until(lambda d: d.current_url == base + "about.html")
        assert_clean(driver)
        # a host serves 404.html at any missing URL: its links still reach the site root
        shutil.copy(site / "404.html", tmp_path / "repo" / "features" / "0" / "missing.html")
        open_page(driver, base + "features/0/missing.html")
        driver.find_element(By.CSS_SELECTOR, "a.home").click()
        WebDriverWait(driver, 5).until(lambda d: d.current_url == base + "index.html")
        assert_clean(driver)
    finally:
        server.shutdown()
        server.server_close()
