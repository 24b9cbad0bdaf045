"""Drive the Gradio demo in headless Chromium: pick watched items by title, read the recommendations back, screenshot.

    .venv/bin/python benchmarks/app_screenshot.py outputs/smollm2-135m-movielens --pick "Star Wars" "Fargo"

Starts the app file as a Space would (`python gti_peft/recsys/app.py` with `$GTI_RUN` and `$GRADIO_SERVER_PORT`),
opens it in Chromium (Debian's `chromium` and `chromium-driver`) through selenium, types each `--pick` into the
history box and takes the first match, presses Recommend, prints the table and writes the screenshot
(default benchmarks/results/app.png). tests/test_app.py uses the same functions.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
APP_FILE = ROOT / "gti_peft" / "recsys" / "app.py"
BROWSERS = ("chromium", "chromium-browser", "google-chrome")


def browser_paths() -> tuple[str, str] | None:
    """`(browser, chromedriver)` executables, or None where either is missing."""
    browser = next((path for name in BROWSERS if (path := shutil.which(name))), None)
    driver = shutil.which("chromedriver")
    return (browser, driver) if browser and driver else None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_space(run_folder: str | Path, port: int, timeout: float = 240) -> subprocess.Popen:
    """Run the app file as a Space does; return once it answers HTTP (or raise, having stopped it)."""
    env = os.environ | {
        "GTI_RUN": str(run_folder), "GRADIO_SERVER_NAME": "127.0.0.1", "GRADIO_SERVER_PORT": str(port),
        "GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_OFFLINE": "1",
    }  # fmt: skip
    log = tempfile.TemporaryFile(mode="w+")  # noqa: SIM115  (a file, not a pipe: a full pipe stalls the app)
    process = subprocess.Popen([sys.executable, str(APP_FILE)], env=env, stdout=log, stderr=subprocess.STDOUT)
    process.log = log
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            log.seek(0)
            raise RuntimeError(f"The app exited with {process.returncode}:\n{log.read()[-3000:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2) as response:
                if response.status == 200:
                    return process
        except OSError:
            time.sleep(1)
    stop(process)
    raise TimeoutError(f"The app did not answer on port {port} within {timeout:.0f} s.")


def stop(process: subprocess.Popen) -> None:
    process.terminate()
    try:
        process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=15)
    process.log.close()


def open_browser(width: int = 1280, height: int = 1500):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    browser, driver = browser_paths()
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 f"--window-size={width},{height}"):  # fmt: skip
        options.add_argument(flag)
    return webdriver.Chrome(service=Service(driver), options=options)


def pick_and_recommend(driver, url: str, picks: list[str], timeout: float = 120) -> tuple[list[str], list[list[str]]]:
    """Type each pick into the history box and take the first match, press Recommend; return the chosen titles and
    the table's rows (rank, title, item id, log-probability) as the page shows them."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support import expected_conditions as EC
    from selenium.webdriver.support.ui import WebDriverWait

    driver.get(url)
    wait = WebDriverWait(driver, timeout)
    box = wait.until(EC.element_to_be_clickable((By.CSS_SELECTOR, "#history input")))
    for pick in picks:
        box.click()
        box.send_keys(pick)
        wait.until(EC.visibility_of_element_located((By.CSS_SELECTOR, "[data-testid=dropdown-option]")))
        box.send_keys(Keys.ENTER)
    box.send_keys(Keys.ESCAPE)
    driver.find_element(By.CSS_SELECTOR, "h1").click()  # closes the option list that covers the button
    chosen = [t.text for t in driver.find_elements(By.CSS_SELECTOR, "#history .token") if t.text]
    driver.find_element(By.CSS_SELECTOR, "#recommend").click()

    def rows(driver):
        cells = {}
        for cell in driver.find_elements(By.CSS_SELECTOR, "#recommendations [role=gridcell]"):
            row, column = int(cell.get_attribute("data-row")), int(cell.get_attribute("data-col"))
            cells.setdefault(row, {})[column] = cell.get_attribute("textContent").strip()
        table = [[cells[r].get(c, "") for c in range(4)] for r in sorted(cells)]
        return table if table and all(all(row) for row in table) else False

    return chosen, wait.until(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_folder")
    parser.add_argument("--pick", nargs="+", default=["Star Wars", "Fargo"])
    parser.add_argument("--output", default=str(ROOT / "benchmarks" / "results" / "app.png"))
    parser.add_argument("--url", default=None, help="Drive an app that is already running instead of starting one")
    args = parser.parse_args()
    if browser_paths() is None:
        raise SystemExit("No chromium + chromedriver here: apt-get install -y chromium chromium-driver")
    port = free_port()
    process = None if args.url else start_space(args.run_folder, port)
    driver = None
    try:
        driver = open_browser()
        chosen, table = pick_and_recommend(driver, args.url or f"http://127.0.0.1:{port}/", args.pick)
        time.sleep(2)  # let the plots finish drawing
        driver.save_screenshot(args.output)
        print("picked:", chosen)
        print("\n".join(" | ".join(row) for row in table))
        print("screenshot:", args.output)
    finally:
        if driver is not None:
            driver.save_screenshot(str(Path(tempfile.gettempdir()) / "app_screenshot_last.png"))  # to debug
            driver.quit()
        if process is not None:
            stop(process)


if __name__ == "__main__":
    main()
