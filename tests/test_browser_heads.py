"""Attention-head pages in headless Chromium: hovering (or focusing) a token shades exactly
what it reads from or is read by, with the intensities of the HeadData; the in/out switch,
the scalar toggle and the total/max choice; the heat map; the index's heads table; no console
errors, and hostile token strings stay text."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from chromium import assert_clean, available, chromium, keyboard_focus, open_page
from head_fixtures import HOSTILE_IDS, HeadSpec, write_head_cache
from site_fixtures import PAYLOADS, site_config, token_table

from sitegen.cache.files import batch_files, read_head_batch
from sitegen.cache.head_data import SCALARS, HeadData, HeadRecord
from sitegen.render import render_site
from sitegen.sources.tokens import display_text

pytestmark = pytest.mark.browser
if not available():
    pytest.skip("needs Debian chromium and chromium-driver", allow_module_level=True)

from selenium.webdriver.common.action_chains import ActionChains  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

SUMMARIES = ("total_in", "max_in", "total_out", "max_out")


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("browser-heads")
    write_head_cache(root / "cache", head_specs=[HeadSpec(), HeadSpec(name="multi", layers=(1, 2), n_heads=2)])
    return render_site(root / "cache", site_config(root), root / "site", workers=1)


@pytest.fixture(scope="module")
def driver(tmp_path_factory):
    with chromium(tmp_path_factory.mktemp("chromium-profile"), logging=True) as drv:
        yield drv


def head(site: Path, feature: int, d: int = 1) -> HeadData:
    return next(hd for p in batch_files(site.parent / "cache", d) for hd in read_head_batch(p) if hd.feature == feature)


def strip(driver, group: int, n: int) -> list:
    return driver.find_elements(By.CSS_SELECTOR, f"#rec-{group}-{n} .ex .t")


def shading(driver, group: int, n: int) -> list[tuple[bool, float | None]]:
    """Per strip token: (marked as a shown pair, its --a intensity or None)."""
    got = driver.execute_script(
        "return Array.from(document.querySelectorAll(arguments[0]), s => "
        "[s.classList.contains('k'), s.style.getPropertyValue('--a')])",
        f"#rec-{group}-{n} .ex .t",
    )
    return [(k, float(a) if a != "" else None) for k, a in got]


def columns(r: HeadRecord) -> list[int]:
    """The strip's positions: earlier keys, then the window."""
    return [*r.earlier, *range(r.start, r.start + len(r.token_ids))]


def js_number(x: float) -> str:
    """JS ``String(x)`` for the numbers pages show (no exponent from 1e-7 up to 1e21)."""
    return np.format_float_positional(x, trim="-")


def norm(x: float, m: float) -> float:
    return max(x, 0.0) / m if m > 0 else 0.0


def expected_in(hd: HeadData, r: HeadRecord, s: int, q: int) -> list[tuple[bool, float | None]]:
    cols = columns(r)
    ps = r.scalars[s]
    shaded = {cols.index(k): norm(v, hd.maxima[s][0]) for k, v in zip(ps.keys[q], ps.values[q])}
    return [(c in shaded, shaded.get(c)) for c in range(len(cols))]


def expected_out(hd: HeadData, r: HeadRecord, s: int, pos: int) -> list[tuple[bool, float | None]]:
    cols = columns(r)
    ps = r.scalars[s]
    shaded = {}
    for q, (keys, values) in enumerate(zip(ps.keys, ps.values)):
        if pos in keys:
            shaded[cols.index(r.start + q)] = norm(values[keys.index(pos)], hd.maxima[s][0])
    return [(c in shaded, shaded.get(c)) for c in range(len(cols))]


def expected_summary(hd: HeadData, r: HeadRecord, s: int, summary: str) -> list[tuple[bool, float | None]]:
    m = hd.maxima[s][1 + SUMMARIES.index(summary)]
    values = getattr(r.scalars[s], summary)
    return [(False, None)] * len(r.earlier) + [(False, norm(x, m)) for x in values]


def hover(driver, span) -> None:
    driver.execute_script("arguments[0].scrollIntoView({block: 'center'})", span)
    ActionChains(driver).move_to_element(span).perform()


def choose(driver, name: str, value: str) -> None:
    driver.find_element(By.CSS_SELECTOR, f'input[name="{name}"][value="{value}"]').click()


def move_away(driver) -> None:
    ActionChains(driver).move_to_element(driver.find_element(By.TAG_NAME, "h1")).perform()


def test_hover_shades_exactly_the_kept_keys(driver, site):
    hd = head(site, 1)
    open_page(driver, (site / "features" / "1" / "1.html").as_uri())
    s = SCALARS.index(hd.rank_by)  # the page starts on the ranking scalar
    tip = driver.find_element(By.ID, "tip")
    for n, r in enumerate(hd.top_records[:3]):
        spans = strip(driver, 0, n)
        assert len(spans) == len(r.earlier) + len(r.token_ids)
        assert "sel" in spans[len(r.earlier) + r.query - r.start].get_attribute("class")
        for q in range(len(r.token_ids)):
            hover(driver, spans[len(r.earlier) + q])
            assert shading(driver, 0, n) == expected_in(hd, r, s, q), (n, q)
            assert tip.is_displayed() and f"position {r.start + q}" in tip.text
            assert f"rest: over its other keys {js_number(r.scalars[s].rest[q])}" in tip.text
    assert_clean(driver)


def test_in_out_switch_and_scalar_toggle(driver, site):
    hd = head(site, 2)
    open_page(driver, (site / "features" / "1" / "2.html").as_uri())
    r = hd.top_records[1]
    spans = strip(driver, 0, 1)
    q = 4
    pos = r.start + q
    hover(driver, spans[len(r.earlier) + q])
    s = SCALARS.index(hd.rank_by)
    assert shading(driver, 0, 1) == expected_in(hd, r, s, q)
    choose(driver, "dir", "out")  # the later shown queries that keep it among their keys
    hover(driver, spans[len(r.earlier) + q])
    out = shading(driver, 0, 1)
    assert out == expected_out(hd, r, s, pos) and out != expected_in(hd, r, s, q)
    other = 1 - s
    choose(driver, "scalar", str(other))
    hover(driver, spans[len(r.earlier) + q])
    assert shading(driver, 0, 1) == expected_out(hd, r, other, pos)
    assert hd.maxima[other][0] != hd.maxima[s][0]  # the values do change
    choose(driver, "dir", "in")
    hover(driver, spans[len(r.earlier) + q])
    assert shading(driver, 0, 1) == expected_in(hd, r, other, q)
    # an earlier token (a key only): out shows the shown queries reading it
    if r.earlier:
        choose(driver, "dir", "out")
        hover(driver, spans[0])
        assert shading(driver, 0, 1) == expected_out(hd, r, other, r.earlier[0])
        assert any(k for k, _ in shading(driver, 0, 1))
    assert_clean(driver)


def test_unselected_shading_by_summary(driver, site):
    hd = head(site, 0)
    open_page(driver, (site / "features" / "1" / "0.html").as_uri())
    move_away(driver)
    s = SCALARS.index(hd.rank_by)
    for dir_, agg, summary in (("in", "0", "total_in"), ("in", "1", "max_in"), ("out", "1", "max_out")):
        choose(driver, "dir", dir_)
        choose(driver, "agg", agg)
        move_away(driver)
        for n, r in enumerate(hd.top_records[:4]):
            assert shading(driver, 0, n) == expected_summary(hd, r, s, summary), (summary, n)
        for n, r in enumerate(hd.random_records):
            assert shading(driver, 1, n) == expected_summary(hd, r, s, summary), (summary, n)
    assert_clean(driver)


def test_zero_maxima_shade_zero_not_nan(driver, site):
    """Head 3 writes nothing: its write-norm maxima are 0, so every intensity is 0."""
    hd = head(site, 3)
    assert hd.maxima[SCALARS.index("write_norm")] == [0, 0, 0, 0, 0]
    open_page(driver, (site / "features" / "1" / "3.html").as_uri())
    choose(driver, "scalar", str(SCALARS.index("write_norm")))
    move_away(driver)
    values = driver.execute_script(
        "return Array.from(document.querySelectorAll('.t.q'), s => s.style.getPropertyValue('--a'))"
    )
    assert values and set(values) == {"0"}
    spans = strip(driver, 0, 0)
    hover(driver, spans[-1])
    assert {a for k, a in shading(driver, 0, 0) if k} == {0.0}
    assert "NaN" not in driver.find_element(By.ID, "tip").text
    assert_clean(driver)


def test_keyboard_focus_selects(driver, site):
    hd = head(site, 1)
    open_page(driver, (site / "features" / "1" / "1.html").as_uri())
    r = hd.random_records[0]
    spans = strip(driver, 1, 0)
    assert all(s.get_attribute("tabindex") == "0" for s in spans)
    keyboard_focus(driver, spans[len(r.earlier) + 2])
    assert shading(driver, 1, 0) == expected_in(hd, r, SCALARS.index(hd.rank_by), 2)
    assert driver.find_element(By.ID, "tip").is_displayed()
    spans[len(r.earlier) + 2].send_keys("\ue014")  # ArrowRight: the next token of the strip
    assert driver.execute_script("return document.activeElement") == spans[len(r.earlier) + 3]
    assert shading(driver, 1, 0) == expected_in(hd, r, SCALARS.index(hd.rank_by), 3)
    assert_clean(driver)


def test_heat_map(driver, site):
    hd = head(site, 1)
    open_page(driver, (site / "features" / "1" / "1.html").as_uri())
    s = SCALARS.index(hd.rank_by)
    buttons = driver.find_elements(By.CSS_SELECTOR, ".rec .hm")
    assert len(buttons) == len(hd.top_records) + len(hd.random_records)
    buttons[0].click()
    r = hd.top_records[0]
    cols = columns(r)

    def cells() -> dict[tuple[int, int], float]:
        got = driver.execute_script(
            "return Array.from(document.querySelectorAll('svg.heat rect.c'), c => "
            "[+c.getAttribute('data-q'), +c.getAttribute('data-c'), c.getAttribute('fill-opacity'), "
            "c.querySelector('title').textContent])"
        )
        assert all(title.startswith("query ") and " ← key " in title for *_, title in got)
        return {(q, c): float(x) for q, c, x, _ in got}

    def expected(scalar: int) -> dict[tuple[int, int], float]:
        ps = r.scalars[scalar]
        return {
            (q, cols.index(k)): norm(v, hd.maxima[scalar][0])
            for q, (keys, values) in enumerate(zip(ps.keys, ps.values))
            for k, v in zip(keys, values)
        }

    assert len(driver.find_elements(By.CSS_SELECTOR, "svg.heat")) == 1
    assert cells() == expected(s)
    choose(driver, "scalar", str(1 - s))  # redrawn for the other scalar
    assert cells() == expected(1 - s)
    buttons[1].click()  # one record at a time
    assert len(driver.find_elements(By.CSS_SELECTOR, "svg.heat")) == 1
    assert driver.find_elements(By.CSS_SELECTOR, "#rec-0-1 svg.heat")
    assert buttons[1].get_attribute("aria-expanded") == "true" and buttons[0].get_attribute("aria-expanded") == "false"
    buttons[1].click()
    assert driver.find_elements(By.CSS_SELECTOR, "svg.heat") == []
    assert_clean(driver)


def test_hostile_tokens_stay_text(driver, site):
    texts = token_table()
    hostile = {texts[i] for i in HOSTILE_IDS}
    assert {display_text(t) for t in PAYLOADS} <= hostile
    for f in range(4):
        hd = head(site, f)
        records = [*hd.top_records, *hd.random_records]
        on_page = {texts[i] for r in records for i in (*r.token_ids, *r.earlier_ids)} & hostile
        if not on_page:
            continue
        open_page(driver, (site / "features" / "1" / f"{f}.html").as_uri())
        for button in driver.find_elements(By.CSS_SELECTOR, ".rec .hm")[:3]:  # heat map labels and titles
            button.click()
        shown = set(driver.execute_script("return Array.from(document.querySelectorAll('.t'), s => s.textContent)"))
        assert on_page <= shown
        for span in driver.find_elements(By.CSS_SELECTOR, ".t")[:40]:
            hover(driver, span)
        assert driver.find_elements(By.CSS_SELECTOR, "main img, main iframe, main script, #tip img") == []
        assert_clean(driver)


def test_index_heads_table_sorts(driver, site):
    open_page(driver, (site / "index.html").as_uri())
    rows = driver.find_elements(By.CSS_SELECTOR, "#head-rows tr")
    assert len(rows) == 8
    driver.find_element(By.CSS_SELECTOR, 'th[data-hsort="previous"]').click()  # one click: descending
    shares = [float(tr.find_elements(By.TAG_NAME, "td")[5].text.rstrip("%")) for tr in rows_of(driver)]
    assert shares == sorted(shares, reverse=True)
    driver.find_element(By.CSS_SELECTOR, 'th[data-hsort="layer"]').click()  # ascending first
    layers = [int(tr.find_elements(By.TAG_NAME, "td")[1].text) for tr in rows_of(driver)]
    assert layers == sorted(layers) and layers[-1] == 2
    open_page(driver, (site / "index.html").as_uri() + "#dict-2")  # a head page's link to a dictionary's row
    assert driver.find_element(By.ID, "dict").get_attribute("value") == "2"
    assert [tr.find_elements(By.TAG_NAME, "td")[0].text for tr in rows_of(driver)] == ["multi"] * 4
    assert driver.find_elements(By.CSS_SELECTOR, "#rows tr") == []
    assert_clean(driver)


def rows_of(driver) -> list:
    return driver.find_elements(By.CSS_SELECTOR, "#head-rows tr")


def test_head_page_links_reach_their_targets(driver, site):
    open_page(driver, (site / "features" / "0" / "0.html").as_uri())
    driver.find_element(By.LINK_TEXT, "H2").click()
    WebDriverWait(driver, 5).until(lambda d: d.current_url.endswith("/features/1/2.html"))
    driver.find_element(By.CSS_SELECTOR, 'a[href="../../index.html#dict-0"]').click()
    WebDriverWait(driver, 5).until(lambda d: d.current_url.endswith("/index.html#dict-0"))
    assert driver.find_element(By.ID, "dict").get_attribute("value") == "0"
    assert_clean(driver)
