"""Prompt pages in headless Chromium: hovering (or focusing) a token shows its per-layer numbers
and next-token predictions; the node table sorts (act × grad: descending, then ascending),
filters by dictionary, layer and position, shows 50 rows more at a time, shows a node's note on
hover; its links reach the node pages, whose "appears in prompt" links come back; no console
errors, and the hostile prompt text and tokens stay text."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from chromium import assert_clean, available, chromium, keyboard_focus, open_page
from prompt_fixtures import HEAD_SPECS, node_layer, write_prompt_cache
from site_fixtures import site_config, token_table

from sitegen.cache.files import read_prompts
from sitegen.cache.prompt_data import PromptData
from sitegen.render import render_site
from sitegen.render.prompt_page import visible_text

pytestmark = pytest.mark.browser
if not available():
    pytest.skip("needs Debian chromium and chromium-driver", allow_module_level=True)

from selenium.webdriver.common.action_chains import ActionChains  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import Select, WebDriverWait  # noqa: E402

NAMES = ["sae", "mlp", "heads", "multi"]
COLUMNS = {"activation": 5, "act_grad": 6, "write_norm": 7, "direct": 8}  # td index in a node row


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("browser-prompts")
    write_prompt_cache(root / "cache")
    (root / "notes.yaml").write_text("sae:\n  1: '<script>window.__pwned=1</script> Fires on *capitals*'\n")
    return render_site(root / "cache", site_config(root, notes="notes.yaml"), root / "site", workers=1)


@pytest.fixture(scope="module")
def driver(tmp_path_factory):
    with chromium(tmp_path_factory.mktemp("chromium-profile"), logging=True) as drv:
        yield drv


def prompt(site: Path, n: int = 0) -> PromptData:
    return read_prompts(site.parent / "cache")[n]


def open_prompt(driver, site: Path, n: int = 0) -> None:
    open_page(driver, (site / "prompts" / f"{prompt(site, n).slug}.html").as_uri())


def js_number(x: float) -> str:
    """JS ``String(x)`` for the numbers pages show (no exponent from 1e-7 up to 1e21)."""
    return np.format_float_positional(x, trim="-")


def js_signed(x: float) -> str:
    return ("+" if x > 0 else "") + js_number(x)


def hover(driver, element) -> None:
    driver.execute_script("arguments[0].scrollIntoView({block: 'center'})", element)
    ActionChains(driver).move_to_element(element).perform()


def rows(driver) -> list[list[str]]:
    return driver.execute_script(
        "return Array.from(document.querySelectorAll('#node-rows tr'), "
        "tr => Array.from(tr.children, td => td.textContent))"
    )


def label(n) -> str:
    if n.dictionary >= 2:
        head = n.feature % HEAD_SPECS[n.dictionary - 2].n_heads
        return f"L{node_layer(n.dictionary, n.feature)}.H{head} (query {n.position} ← key {n.key})"
    return f"{'neuron' if n.dictionary == 1 else 'feature'} {n.feature}"


def expected_row(pd: PromptData, rank: int) -> list[str]:
    n, texts = pd.nodes[rank], token_table()
    return [
        str(rank + 1),
        NAMES[n.dictionary],
        label(n),
        str(node_layer(n.dictionary, n.feature)),
        f"{n.position} {texts[pd.token_ids[n.position]]}",
        js_number(n.activation),
        js_signed(n.act_grad),
        js_number(n.write_norm),
        js_signed(n.direct),
    ]


def test_table_rows_show_the_nodes(driver, site):
    pd = prompt(site)
    open_prompt(driver, site)
    assert rows(driver) == [expected_row(pd, i) for i in range(50)]
    assert driver.find_element(By.ID, "count").text == "showing 50 of 600 nodes"
    more = driver.find_element(By.ID, "more")
    more.click()
    assert rows(driver) == [expected_row(pd, i) for i in range(100)]
    assert_clean(driver)


def test_sort_by_act_grad_toggles(driver, site):
    pd = prompt(site)
    open_prompt(driver, site)
    th = driver.find_element(By.CSS_SELECTOR, '#nodes th[data-sort="7"]')
    assert th.text.startswith("act × grad")
    values = sorted(((n.act_grad, i) for i, n in enumerate(pd.nodes)), key=lambda v: (-v[0], v[1]))
    th.click()  # descending: the top 50
    assert th.get_attribute("aria-sort") == "descending"
    assert rows(driver) == [expected_row(pd, i) for _, i in values[:50]]
    th.click()  # ascending: the bottom 50
    assert th.get_attribute("aria-sort") == "ascending"
    values = sorted(((n.act_grad, i) for i, n in enumerate(pd.nodes)), key=lambda v: (v[0], v[1]))
    assert rows(driver) == [expected_row(pd, i) for _, i in values[:50]]
    shown = [float(r[COLUMNS["act_grad"]]) for r in rows(driver)]
    assert shown == sorted(shown) and shown[0] == min(n.act_grad for n in pd.nodes)
    wn = driver.find_element(By.CSS_SELECTOR, '#nodes th[data-sort="8"]')
    wn.click()  # another column starts descending
    assert th.get_attribute("aria-sort") is None and wn.get_attribute("aria-sort") == "descending"
    shown = [float(r[COLUMNS["write_norm"]]) for r in rows(driver)]
    assert shown == sorted((n.write_norm for n in pd.nodes), reverse=True)[:50]
    driver.find_element(By.CSS_SELECTOR, '#nodes th[data-sort="rank"]').click()  # back to the engine's order
    assert rows(driver) == [expected_row(pd, i) for i in range(50)]
    assert_clean(driver)


def test_filters(driver, site):
    pd = prompt(site)
    open_prompt(driver, site)
    Select(driver.find_element(By.ID, "f-dict")).select_by_value("2")
    want = [i for i, n in enumerate(pd.nodes) if n.dictionary == 2]
    assert rows(driver) == [expected_row(pd, i) for i in want[:50]]
    assert driver.find_element(By.ID, "count").text == f"showing 50 of {len(want)} nodes (600 before filtering)"
    Select(driver.find_element(By.ID, "f-dict")).select_by_value("")
    Select(driver.find_element(By.ID, "f-layer")).select_by_value("2")
    want = [i for i, n in enumerate(pd.nodes) if node_layer(n.dictionary, n.feature) == 2]
    assert rows(driver) == [expected_row(pd, i) for i in want[:50]]
    assert {r[1] for r in rows(driver)} == {"mlp", "multi"}
    Select(driver.find_element(By.ID, "f-pos")).select_by_value("4")
    want = [i for i in want if pd.nodes[i].position == 4]
    assert 0 < len(want) < 50 and rows(driver) == [expected_row(pd, i) for i in want]
    assert not driver.find_element(By.ID, "more").is_displayed()
    Select(driver.find_element(By.ID, "f-dict")).select_by_value("1")  # all three at once
    want = [i for i in want if pd.nodes[i].dictionary == 1]
    assert rows(driver) == [expected_row(pd, i) for i in want]
    driver.find_element(By.CSS_SELECTOR, '#nodes th[data-sort="7"]').click()  # a sort keeps the filters
    assert rows(driver) == [expected_row(pd, i) for i in sorted(want, key=lambda i: (-pd.nodes[i].act_grad, i))]
    assert_clean(driver)


def test_hovering_a_token_shows_its_numbers(driver, site):
    pd, texts = prompt(site), token_table()
    open_prompt(driver, site)
    spans = driver.find_elements(By.CSS_SELECTOR, "#strip .pt")
    assert len(spans) == len(pd.token_ids)
    assert [s.find_element(By.CSS_SELECTOR, ".t").get_attribute("textContent") for s in spans] == [
        texts[i] for i in pd.token_ids
    ]
    assert [("sel" in s.get_attribute("class")) for s in spans] == [p == pd.position for p in range(len(spans))]
    tip = driver.find_element(By.ID, "tip")
    for p in (1, 5, pd.position):
        hover(driver, spans[p])
        assert tip.is_displayed()
        cells = driver.execute_script(
            "return Array.from(arguments[0].querySelectorAll('table'), t => Array.from(t.rows, "
            "r => Array.from(r.cells, c => c.textContent)))",
            tip,
        )
        layers, predictions = cells
        assert layers[1:-1] == [
            [str(k), js_signed(a), js_signed(m)] for k, (a, m) in enumerate(pd.layer_attribution[p])
        ]
        assert layers[-1][0] == "sum"
        assert predictions[1:] == [
            [texts[i], js_number(v)] for i, v in zip(pd.next_tokens[p].token_ids, pd.next_tokens[p].values)
        ]
        assert f"position {p}" in tip.text
    # the bars: one per layer and attention/MLP where the value is not 0, none at BOS (all 0)
    n_rects = driver.execute_script(
        "return Array.from(document.querySelectorAll('#strip .pt'), s => s.querySelectorAll('rect').length)"
    )
    assert n_rects == [sum(v != 0 for layer in per for v in layer) for per in pd.layer_attribution] and n_rects[0] == 0
    keyboard_focus(driver, spans[2])  # keyboard: focus, then arrows
    assert "position 2" in tip.text
    spans[2].send_keys("\ue014")  # ArrowRight
    assert driver.execute_script("return document.activeElement") == spans[3] and "position 3" in tip.text
    assert_clean(driver)


def test_note_on_hover_and_links_both_ways(driver, site):
    pd = prompt(site)
    open_prompt(driver, site)
    cell = driver.find_element(By.CSS_SELECTOR, '#node-rows [data-note] a[href="../features/0/1.html"]')
    hover(driver, cell)
    tip = driver.find_element(By.ID, "tip")
    assert tip.is_displayed() and tip.text == "Fires on capitals"
    unbuilt = [r for r in driver.find_elements(By.CSS_SELECTOR, "#node-rows tr") if "feature 3" in r.text]
    assert unbuilt and all(not r.find_elements(By.CSS_SELECTOR, "a") for r in unbuilt)
    first = driver.find_element(By.CSS_SELECTOR, "#node-rows tr a")
    n = pd.nodes[0]
    assert first.text == label(n)
    first.click()
    WebDriverWait(driver, 5).until(lambda d: d.current_url.endswith(f"/features/{n.dictionary}/{n.feature}.html"))
    back = driver.find_element(By.CSS_SELECTOR, f'p.appears a[href="../../prompts/{pd.slug}.html"]')
    assert "as #1 by attribution" in back.find_element(By.XPATH, "..").text
    back.click()
    WebDriverWait(driver, 5).until(lambda d: d.current_url.endswith(f"/prompts/{pd.slug}.html"))
    open_page(driver, (site / "index.html").as_uri())
    driver.find_element(By.CSS_SELECTOR, f'#prompts a[href="prompts/{pd.slug}.html"]').click()
    WebDriverWait(driver, 5).until(lambda d: d.current_url.endswith(f"/prompts/{pd.slug}.html"))
    assert_clean(driver)


def test_hostile_prompt_stays_text(driver, site):
    for k in range(3):
        pd = prompt(site, k)
        open_prompt(driver, site, k)
        assert driver.find_element(By.ID, "prompt-text").get_attribute("textContent") == visible_text(pd.text)
        for span in driver.find_elements(By.CSS_SELECTOR, "#strip .pt"):
            hover(driver, span)
        for cell in driver.find_elements(By.CSS_SELECTOR, "#node-rows [data-note]")[:5]:
            hover(driver, cell)
        Select(driver.find_element(By.ID, "f-pos")).select_by_index(1)
        assert driver.find_elements(By.CSS_SELECTOR, "main img, main iframe, main script, #tip img, #tip script") == []
        assert_clean(driver)
    open_page(driver, (site / "index.html").as_uri())
    assert_clean(driver)
