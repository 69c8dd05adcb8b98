"""Explanations in headless Chromium: the index's explanation and score columns, searched,
sorted by score (unscored and unexplained last either way), the "unexplained only" filter
with the density sort, feature pages listing them best first, and hostile explanation text
that stays text."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from chromium import available, chromium
from site_fixtures import DictSpec, site_config, write_cache

from sitegen.render import render_site

pytestmark = pytest.mark.browser
if not available():
    pytest.skip("needs Debian chromium and chromium-driver", allow_module_level=True)

from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.common.keys import Keys  # noqa: E402
from test_browser_site import assert_clean, index_data, open_page, shown_rows  # noqa: E402

HOSTILE = '<img src=x onerror="window.__pwned=1"> <script>window.__pwned=1</script> [x](javascript:alert(1))'
# feature -> [(text, score)], in file order
EXPLAINED = {
    0: [("fires on closing brackets", 0.2)],
    1: [("Python keywords", 0.9), ("the def keyword", 0.95)],
    2: [("unscored words", None)],
    3: [("a zebra of tokens", 0.5)],
    5: [("commas in argument lists", 0.7), ("a second opinion", None)],
    6: [(HOSTILE, None)],
}
IDS = tuple(range(12))


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("browser-expl")
    write_cache(root / "cache", [DictSpec(feature_ids=IDS), DictSpec(name="other", feature_ids=(0, 1))])
    rows = [
        {"dictionary": "sae", "feature": f, "explanation": text, **({"score": s} if s is not None else {})}
        for f, listed in EXPLAINED.items()
        for text, s in listed
    ]
    (root / "explanations.yaml").write_text(yaml.safe_dump(rows, sort_keys=False))
    cfg = site_config(root)
    cfg.site.explanations = ["explanations.yaml"]
    return render_site(root / "cache", cfg, root / "site")


@pytest.fixture(scope="module")
def driver(tmp_path_factory):
    with chromium(tmp_path_factory.mktemp("chromium-profile"), logging=True) as drv:
        yield drv


def best(f: int) -> tuple[str, float | None] | None:
    """The index's (text, score) of feature ``f`` of "sae": its highest-scored explanation."""
    if f not in EXPLAINED:
        return None
    listed = EXPLAINED[f]
    return (
        max(listed, key=lambda e: -1 if e[1] is None else e[1]) if any(s is not None for _, s in listed) else listed[0]
    )


def cells(driver) -> list[tuple[str, str]]:
    """(explanation, score) cell texts of the listed rows."""
    return [
        (r.find_element(By.CSS_SELECTOR, "td.expl").text, r.find_element(By.CSS_SELECTOR, "td.sc").text)
        for r in driver.find_elements(By.CSS_SELECTOR, "#rows tr")
    ]


def test_index_column_search_and_sort(driver, site):
    open_page(driver, (site / "index.html").as_uri())
    data = index_data(site)
    rows = shown_rows(driver, data)
    got = dict(zip(((data["d"][k], data["id"][k]) for k in rows), cells(driver)))
    for f in IDS:
        b = best(f)
        assert got[(0, f)] == ((b[0], "" if b[1] is None else f"{b[1]:g}") if b else ("", "")), f
    assert got[(1, 0)] == ("", "")
    assert not driver.find_elements(By.CSS_SELECTOR, "#rows img, #rows script, #rows a[href^=javascript]")

    type_search(driver, "zebra")
    assert [data["id"][k] for k in shown_rows(driver, data)] == [3]
    type_search(driver, "DEF KEYWORD")  # case-insensitive, every term, the best explanation's words
    assert [data["id"][k] for k in shown_rows(driver, data)] == [1]
    for other in ("python", "opinion"):  # only the best explanation is in the index
        type_search(driver, other)
        assert shown_rows(driver, data) == []
    type_search(driver, "")
    assert len(shown_rows(driver, data)) == len(data["id"])

    header = driver.find_element(By.CSS_SELECTOR, 'th[data-sort="escore"]')
    header.click()  # largest first; unscored and unexplained last, in index order
    scored = sorted(
        (k for k in range(len(data["id"])) if score_of(data, k) is not None), key=lambda k: -score_of(data, k)
    )
    rest = [k for k in range(len(data["id"])) if score_of(data, k) is None]
    assert shown_rows(driver, data) == scored + rest
    assert [data["id"][k] for k in scored] == [1, 5, 3, 0]
    header.click()  # smallest first; still last
    assert shown_rows(driver, data) == scored[::-1] + rest
    assert_clean(driver)


def type_search(driver, text: str) -> None:
    """Replace the search box's text, as typing does (each key an input event)."""
    search = driver.find_element(By.ID, "search")
    search.send_keys(Keys.CONTROL, "a")
    search.send_keys(text or Keys.BACKSPACE)


def score_of(data: dict, k: int) -> float | None:
    return next((s for r, _, s in data["expl"] if r == k), None)


def test_unexplained_filter_with_density_sort(driver, site):
    open_page(driver, (site / "index.html").as_uri())
    data = index_data(site)
    driver.find_element(By.ID, "unexpl").click()
    explained = {r for r, _, _ in data["expl"]}
    unexplained = [k for k in range(len(data["id"])) if k not in explained]
    assert sorted(shown_rows(driver, data)) == unexplained and len(unexplained) == len(IDS) - len(EXPLAINED) + 2
    density = driver.find_element(By.CSS_SELECTOR, 'th[data-sort="density"]')
    density.click()
    density.click()  # densest first: "unexplained, dense features first"
    assert shown_rows(driver, data) == sorted(unexplained, key=lambda k: (data["density"][k], k))[::-1]
    assert all(text == "" for text, _ in cells(driver))
    driver.find_element(By.ID, "unexpl").click()
    assert len(shown_rows(driver, data)) == len(data["id"])
    assert_clean(driver)


def test_feature_pages_and_hostile_text(driver, site):
    open_page(driver, (site / "features/0/1.html").as_uri())
    items = driver.find_elements(By.CSS_SELECTOR, ".expl-list li .expl-text")
    assert [i.text for i in items] == ["the def keyword", "Python keywords"]  # best first
    open_page(driver, (site / "features/0/5.html").as_uri())
    assert [i.text for i in driver.find_elements(By.CSS_SELECTOR, ".expl-text")] == [
        "commas in argument lists",
        "a second opinion",
    ]
    assert "no score" in driver.find_elements(By.CSS_SELECTOR, ".expl-meta")[1].text
    open_page(driver, (site / "features/0/6.html").as_uri())
    (text,) = driver.find_elements(By.CSS_SELECTOR, ".expl-text")
    assert text.text == HOSTILE
    assert not driver.find_elements(By.CSS_SELECTOR, ".expl img, .expl script, .expl a")
    assert_clean(driver)
    open_page(driver, (site / "index.html").as_uri())
    type_search(driver, "pwned")
    (row,) = driver.find_elements(By.CSS_SELECTOR, "#rows tr")
    assert row.find_element(By.CSS_SELECTOR, "td.expl").text == HOSTILE
    assert_clean(driver)
