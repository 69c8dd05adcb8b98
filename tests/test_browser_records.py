"""Imported NeuronRecord pages in headless Chromium: every record drawn with its tokens, each
token's shade its value over the top records' largest, the tooltip with the token and its value
(for token-pair records, the keys it reads most), keyboard focus; no console errors, and hostile
token strings stay text."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
from chromium import assert_clean, available, chromium, keyboard_focus, open_page
from site_fixtures import PAYLOADS
from test_imports import import_project, write_openai_folder

from sitegen.cache.record_data import RECORDS_KIND, ActivationRecord
from sitegen.config import load_config
from sitegen.imports import build_record_cache, record_folders
from sitegen.render import render_site
from sitegen.text import display_text

pytestmark = pytest.mark.browser
if not available():
    pytest.skip("needs Debian chromium and chromium-driver", allow_module_level=True)

from selenium.webdriver.common.action_chains import ActionChains  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402


def pair_record(layer: int, index: int) -> dict:
    tokens = ["<bos>", " a", PAYLOADS[0], " b"]
    pairs = [0.5, 0.25, 2.0, 0.0, 4.0, 1.0, 0.125, 3.0, 0.5, 1.5]  # token n's n scalars
    rec = {"tokens": tokens, "activations": pairs}
    return {"neuron_id": {"layer_index": layer, "neuron_index": index}, "most_positive_activation_records": [rec]}


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("browser-records")
    folder = write_openai_folder(root / "recs", {2: [0, 1]}, random.randrange(2**32))
    first = json.loads((folder / "2" / "0.json").read_text(encoding="utf-8"))
    first["most_positive_activation_records"][0]["tokens"][3] = PAYLOADS[1]
    (folder / "2" / "0.json").write_text(json.dumps(first), encoding="utf-8")
    (root / "pairs" / "1").mkdir(parents=True)
    (root / "pairs" / "1" / "3.json").write_text(json.dumps(pair_record(1, 3)), encoding="utf-8")
    config = import_project(
        root / "p",
        [
            {"name": "recs", "kind": RECORDS_KIND, "path": str(folder)},
            {"name": "pairs", "kind": RECORDS_KIND, "path": str(root / "pairs")},
        ],
    )
    cfg = load_config(config)
    build_record_cache(cfg, record_folders(cfg), root / "p" / ".sitegen-cache")
    return render_site(root / "p" / ".sitegen-cache", cfg, root / "p" / "site", workers=1)


@pytest.fixture(scope="module")
def driver(tmp_path_factory):
    with chromium(tmp_path_factory.mktemp("chromium-profile"), logging=True) as drv:
        yield drv


def js_number(x: float) -> str:
    """``x`` as the page writes it: 4 significant digits, JavaScript's shortest form."""
    y = float(f"{x:.4g}")
    return str(int(y)) if y.is_integer() else repr(y)


def test_records_are_drawn_shaded_and_hovered(site, driver):
    file = json.loads((site.parent.parent / "recs" / "2" / "0.json").read_text(encoding="utf-8"))
    open_page(driver, (site / "features" / "0" / "0.html").as_uri())
    lines = driver.find_elements(By.CSS_SELECTOR, ".recs[data-group='0'] .ex")
    top = file["most_positive_activation_records"]
    assert len(lines) == len(top)
    scale = max(v for r in top for v in r["activations"])
    for line, rec in zip(lines, top):
        spans = line.find_elements(By.CSS_SELECTOR, ".t")
        texts = driver.execute_script(
            "return Array.from(arguments[0].querySelectorAll('.t'), s => s.textContent)", line
        )
        assert texts == [display_text(t) for t in rec["tokens"]]
        alphas = driver.execute_script(
            "return Array.from(arguments[0].querySelectorAll('.t'), s => s.style.backgroundColor)", line
        )
        for a, v in zip(alphas, rec["activations"]):
            want = 0.85 * min(v / scale, 1) if v > 0 else None
            if want is None or round(want, 3) == 0:
                assert a in ("", "rgba(255, 140, 0, 0)"), (a, v)
            else:
                assert abs(float(a.rsplit(",", 1)[1].rstrip(")")) - want) < 6e-3, (
                    a,
                    v,
                )  # Chrome: alpha in 1/255 steps, 2 decimals
        best = max(range(len(rec["activations"])), key=lambda k: (rec["activations"][k], -k))
        assert "sel" in spans[best].get_attribute("class")
    spans = lines[0].find_elements(By.CSS_SELECTOR, ".t")
    k = max(range(len(top[0]["activations"])), key=lambda n: top[0]["activations"][n])
    ActionChains(driver).move_to_element(spans[k]).perform()
    tip = driver.find_element(By.ID, "tip")
    assert tip.is_displayed()
    assert f"position {k} · activation {js_number(top[0]['activations'][k])}" in tip.text
    # hostile tokens are text on the page
    assert PAYLOADS[1] in driver.find_element(By.CSS_SELECTOR, ".recs[data-group='0']").text
    assert "Not on this page, because a NeuronRecord cannot support it" in driver.page_source
    assert_clean(driver)


def test_token_pair_records_list_the_keys_read(site, driver):
    open_page(driver, (site / "features" / "1" / "3.html").as_uri())
    spans = driver.find_elements(By.CSS_SELECTOR, ".recs[data-group='0'] .t")
    assert len(spans) == 4
    rec = ActivationRecord(pair_record(1, 3)["most_positive_activation_records"][0]["tokens"], [])
    assert rec.tokens[2] == PAYLOADS[0] and spans[2].text == PAYLOADS[0]
    # token 3 (" b") reads keys 0..3 with 0.125, 3.0, 0.5, 1.5: its value is 3, its top keys 1, 3, 2
    keyboard_focus(driver, spans[3])
    tip = driver.find_element(By.ID, "tip").text
    assert "largest pair scalar 3" in tip
    assert tip.index("reads key 1") < tip.index("reads key 3") < tip.index("reads key 2")
    assert "reads key 0" not in tip
    assert_clean(driver)
