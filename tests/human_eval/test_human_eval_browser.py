"""The rating page in a real browser: `covip human-eval serve` as a subprocess on loopback, Debian's
chromium driven headless through its own chromedriver (nothing downloaded at test time).

A rater answers by mouse and by keyboard, reloads in the middle of an item, goes back after a submit,
closes the browser and resumes from their link in a fresh profile, and finishes; then the database
must hold exactly one row per comparison, with the policies the plan put behind A and B, and the
summary stage must run on it. Where chromium is missing it is installed with apt-get under CI=true
(CI must run this test), and the test is skipped elsewhere.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from support.loopback import free_port, wait_until_up

from covip.human_eval.settings import HumanEvalSettings
from covip.human_eval.store import read_votes
from covip.human_eval.study import load_study
from covip.stages.human_eval import summarize_human_eval

from support.study_data import POLICIES, SEED

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}
# Set to a path (e.g. docs/human-eval.png) to also keep the screenshot there.
SCREENSHOT_COPY = os.environ.get("COVIP_HUMAN_EVAL_SCREENSHOT")


def _unavailable(reason: str):
    if IN_CI:
        pytest.fail(f"{reason} (CI must run the browser test)")
    pytest.skip(reason)


def _install_chromium() -> None:
    """apt-get chromium and its driver (CI only: a fresh machine where the test runs as root)."""
    if shutil.which("apt-get") is None or os.geteuid() != 0:
        _unavailable("chromium/chromedriver are missing and cannot be installed here (needs root and apt-get)")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    for command in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", "chromium", "chromium-driver"]):
        result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900)
        if result.returncode != 0:
            pytest.fail(f"{' '.join(command)} failed:\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}")


@pytest.fixture(scope="module")
def browser_binaries():
    try:
        import selenium  # noqa: F401
    except ImportError:
        _unavailable("selenium is not installed (the 'test' extra)")
    if not (CHROMEDRIVER.exists() and CHROMIUM.exists()):
        if not IN_CI:
            pytest.skip(f"{CHROMEDRIVER} or {CHROMIUM} missing (apt-get install chromium chromium-driver)")
        _install_chromium()
    return CHROMIUM, CHROMEDRIVER


@pytest.fixture
def server(study_run, tmp_path):
    """A running `covip human-eval serve` with one rater link: (base URL, link, config, votes path, output)."""
    votes = tmp_path / "study" / "votes.sqlite"
    config = study_run.config(tmp_path / "config.yaml", votes)
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "COVIP_HUMAN_EVAL_SECRET"}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), env.get("PYTHONPATH", "")])
    process = subprocess.Popen(
        [sys.executable, "-u", "-m", "covip.cli", "human-eval", "serve", "--configfile", str(config),
         "--port", str(port), "--rater-links", "1"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
    )
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(iter(process.stdout.readline, "")), daemon=True)
    reader.start()
    base = f"http://127.0.0.1:{port}"
    wait_until_up(f"{base}/healthz", process, 60, lambda: "covip human-eval serve did not start:\n" + "".join(lines), 0.2)
    link = next(line.split(": ", 1)[1].strip() for line in lines if line.strip().startswith("rater-1: "))
    yield base, link, config, votes, lines
    process.terminate()
    process.wait(timeout=20)
    reader.join(5)
    # SIGTERM stops it cleanly: the write-ahead log is folded into the database file.
    assert process.returncode == 0 and any(line.startswith("stopped; ") for line in lines), "".join(lines)
    wal = votes.with_name(votes.name + "-wal")
    assert not wal.exists() or wal.stat().st_size == 0


def _chrome(binaries, profile: Path):
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    chromium, chromedriver = binaries
    options = Options()
    options.binary_location = str(chromium)
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     "--disable-background-networking", "--disable-component-update", "--disable-sync",
                     "--no-first-run", f"--user-data-dir={profile}", "--window-size=1280,2100"):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(str(chromedriver)), options=options)
    driver.set_page_load_timeout(30)
    return driver


def _progress(driver) -> str:
    from selenium.webdriver.common.by import By

    return driver.find_element(By.CSS_SELECTOR, "#progress span").text


def _item(driver) -> str:
    from selenium.webdriver.common.by import By

    return driver.find_element(By.CSS_SELECTOR, "input[name=item]").get_attribute("value")


def _wait_for(driver, text: str):
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(driver, 15).until(lambda d: text in d.page_source)


def _by_mouse(driver, context: str, image: str):
    from selenium.webdriver.common.by import By

    driver.find_element(By.CSS_SELECTOR, f"input[name=context][value={context}]").click()
    driver.find_element(By.CSS_SELECTOR, f"input[name=image][value={image}]").click()
    driver.find_element(By.ID, "submit").click()


KEYS = {"context": {"A": "1", "B": "2", "tie": "3"}, "image": {"A": "q", "B": "w", "tie": "e"}}


def _by_keyboard(driver, context: str, image: str, submit: bool = True):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.keys import Keys

    keys = KEYS["context"][context] + KEYS["image"][image] + (Keys.ENTER if submit else "")
    ActionChains(driver).send_keys(keys).perform()


def test_a_rater_rates_by_mouse_and_keyboard_reloads_resumes_and_finishes(browser_binaries, server, study_run,
                                                                         tmp_path, monkeypatch):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.common.selenium_manager import SeleniumManager

    def no_downloads(*_args, **_kwargs):
        raise AssertionError("selenium tried to run its driver manager")

    monkeypatch.setattr(SeleniumManager, "binary_paths", no_downloads)
    base, link, config, votes, output = server
    plan = load_study(study_run.outdir, POLICIES, HumanEvalSettings(items_per_rater=6, shared_items=3), SEED).plan
    items = plan.for_rater("rater-1")
    assert len(items) == 6
    answered: dict[str, tuple[str, str]] = {}
    started = time.perf_counter()

    driver = _chrome(browser_binaries, tmp_path / "profile-1")
    try:
        driver.get(link)
        _wait_for(driver, "1 of 6")
        assert driver.current_url == f"{base}/rate"
        # Every image of the item is served and decodes in the browser.
        for image in driver.find_elements(By.TAG_NAME, "img"):
            assert driver.execute_script("return arguments[0].complete && arguments[0].naturalWidth", image) > 0
        driver.save_screenshot(str(tmp_path / "human-eval.png"))
        if SCREENSHOT_COPY:
            shutil.copy(tmp_path / "human-eval.png", ROOT / SCREENSHOT_COPY)

        # 1: by mouse.
        assert _item(driver) == items[0].item_id
        _by_mouse(driver, "A", "B")
        answered[items[0].item_id] = ("A", "B")
        _wait_for(driver, "2 of 6")
        # 2: by keyboard; Enter before both questions are answered only shows the hint.
        ActionChains(driver).send_keys("2" + Keys.ENTER).perform()
        assert driver.find_element(By.ID, "hint").is_displayed() and "2 of 6" in _progress(driver)
        _by_keyboard(driver, "B", "tie")
        answered[items[1].item_id] = ("B", "tie")
        _wait_for(driver, "3 of 6")
        # 3: answer by keyboard, then reload before submitting: nothing is recorded, the item stays.
        _by_keyboard(driver, "tie", "A", submit=False)
        driver.refresh()
        _wait_for(driver, "3 of 6")
        assert _item(driver) == items[2].item_id
        assert len(read_votes(votes)) == 2
        _by_keyboard(driver, "tie", "A")
        answered[items[2].item_id] = ("tie", "A")
        _wait_for(driver, "4 of 6")
        # The back button asks the server again and shows the current item, not the old form.
        driver.back()
        _wait_for(driver, "of 6")
        assert _item(driver) == items[3].item_id
    finally:
        driver.quit()

    # A fresh browser (no cookie): the link resumes at the first unanswered comparison.
    driver = _chrome(browser_binaries, tmp_path / "profile-2")
    try:
        driver.get(link)
        _wait_for(driver, "4 of 6")
        for k, (context, image) in zip(range(3, 6), [("A", "A"), ("B", "B"), ("tie", "tie")]):
            assert _item(driver) == items[k].item_id
            (_by_keyboard if k % 2 else _by_mouse)(driver, context, image)
            answered[items[k].item_id] = (context, image)
            _wait_for(driver, f"{k + 2} of 6" if k < 5 else "All done")
        assert "answered all 6 comparisons" in driver.find_element(By.ID, "detail").text
        driver.get(f"{base}/r/not-a-token")
        assert "Unknown rater link" in driver.page_source
    finally:
        driver.quit()
    browser_seconds = time.perf_counter() - started

    rows = read_votes(votes)
    assert len(rows) == 6 and {row["rater"] for row in rows} == {"rater-1"}
    by_item = {row["item_id"]: row for row in rows}
    for item in items:
        row = by_item[item.item_id]
        assert (row["policy_a"], row["policy_b"], row["sample_id"]) == (item.policy_a, item.policy_b, item.sample_id)
        assert (row["choice_context"], row["choice_image"]) == answered[item.item_id]
        assert row["plan_version"] == plan.version and row["shown_at"] <= row["submitted_at"]
    pairs, ranking, agreement = summarize_human_eval(rows, study_run.answers)
    assert sum(r["n_votes"] for r in pairs if r["criterion"] == "context") == 6
    assert {r["policy"] for r in ranking} <= set(POLICIES)
    assert {r["judge"] for r in agreement if r["measure"] != "krippendorff_alpha"} == {"lexical_judge"}
    assert browser_seconds < 60, f"the browser part took {browser_seconds:.0f} s"
