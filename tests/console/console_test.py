"""The web console in headless Chromium, driven by Selenium as a user
clicks through it (run by tests/tests/console.rs):

1. sign in with a key; the job list shows;
2. submit a job from the form, watch it reach SUCCEEDED on its page without
   reloading, and open one of its result objects through its download link;
3. submit a slow job (its config field generated from the echo pipeline's
   schema) and cancel it from its page;
4. a job whose batch fails its one delivery ends with a dead letter, which
   re-run from the page makes it SUCCEEDED;
5. the pipelines and keys pages;
6. a key of another account sees none of the first account's jobs.

Screenshots of each page go to $BATCHMILL_SCREENSHOTS when it is set.
Prints "all checks passed" at the end.
"""

import json
import os
import time
import urllib.request

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as EC
from selenium.webdriver.support.ui import WebDriverWait

URL = os.environ["BATCHMILL_CONSOLE_URL"].rstrip("/")
KEY = os.environ["BATCHMILL_API_KEY"]
OTHER = os.environ["BATCHMILL_OTHER_KEY"]
SHOTS = os.environ.get("BATCHMILL_SCREENSHOTS")

options = webdriver.ChromeOptions()
options.binary_location = os.environ.get("BATCHMILL_CHROMIUM", "/usr/bin/chromium")
for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1280,1000"):
    options.add_argument(arg)
# A TLS gateway's certificate, from the test's own CA: trusted by its key.
if os.environ.get("BATCHMILL_GATEWAY_SPKI"):
    options.add_argument("--ignore-certificate-errors-spki-list=" + os.environ["BATCHMILL_GATEWAY_SPKI"])
driver = webdriver.Chrome(service=Service(os.environ.get("BATCHMILL_CHROMEDRIVER", "/usr/bin/chromedriver")),
                          options=options)
wait = WebDriverWait(driver, 60)


def shot(name):
    if SHOTS:
        driver.save_screenshot(os.path.join(SHOTS, f"{name}.png"))


def text_is(locator, want):
    return lambda d: d.find_element(*locator).text == want


def sign_in(key, account):
    driver.get(URL + "/")
    driver.execute_script("sessionStorage.clear()")
    driver.get(URL + "/#/jobs")
    field = wait.until(EC.presence_of_element_located((By.ID, "key")))
    shot("sign-in") if account == "admin" else None
    field.send_keys(key)
    driver.find_element(By.CSS_SELECTOR, "#signin button").click()
    wait.until(lambda d: account in d.find_element(By.ID, "who").text)
    wait.until(EC.presence_of_element_located((By.ID, "jobs")))


def submit(items, batch_size, workers, config=None, deliveries=None):
    driver.get(URL + "/#/submit?pipeline=echo")
    form = wait.until(EC.presence_of_element_located((By.ID, "submit")))
    wait.until(EC.presence_of_element_located((By.NAME, "config.delay_ms")))
    form = driver.find_element(By.ID, "submit")
    area = form.find_element(By.NAME, "items")
    area.clear()
    area.send_keys(json.dumps(items))
    for name, value in (("batchSize", batch_size), ("workers", workers)):
        field = form.find_element(By.NAME, name)
        field.clear()
        field.send_keys(str(value))
    for name, value in (config or {}).items():
        form.find_element(By.NAME, f"config.{name}").send_keys(json.dumps(value))
    if deliveries:
        form.find_element(By.NAME, "deliveries").send_keys(str(deliveries))
    if config:
        shot("submit")
    form.find_element(By.CSS_SELECTOR, "button.primary").click()
    wait.until(lambda d: "#/jobs/" in d.current_url)
    return driver.current_url.split("#/jobs/")[1]


sign_in(KEY, "admin")

# A job from the form, followed live to SUCCEEDED.
first = submit([{"n": i} for i in range(5)], 2, 2)
wait.until(text_is((By.ID, "state"), "SUCCEEDED"))
wait.until(lambda d: d.find_element(By.ID, "batches").text == "3/3")
assert driver.find_element(By.ID, "items").text == "5/5", driver.find_element(By.ID, "items").text
links = wait.until(lambda d: [a.get_attribute("href") for a in d.find_elements(By.CSS_SELECTOR, "#outputs a")] or None)
shot("job")
results = [json.loads(line) for href in links if ".jsonl" in href.split("?")[0]
           for line in urllib.request.urlopen(href).read().decode().splitlines()]
assert sorted(r["result"]["n"] for r in results) == [0, 1, 2, 3, 4], results

# A slow job, cancelled from its page.
second = submit([{"n": i} for i in range(20)], 1, 1, {"delay_ms": 1500})
wait.until(EC.element_to_be_clickable((By.ID, "cancel"))).click()
wait.until(text_is((By.ID, "state"), "CANCELLED"))

# A batch that fails while its one delivery runs is dead-lettered; re-run from
# the page once it would pass, the job ends SUCCEEDED.
until = int(time.time() * 1000) + 6000
third = submit([{"n": i} for i in range(4)], 2, 1, {"fail_batches": [0], "fail_until_ms": until}, deliveries=1)
wait.until(text_is((By.ID, "state"), "COMPLETED_WITH_FAILURES"))
rerun = wait.until(EC.element_to_be_clickable((By.ID, "rerun")))
shot("dead-letters")
time.sleep(max(0, until / 1000 - time.time()) + 0.5)
driver.find_element(By.ID, "rerun").click()
wait.until(text_is((By.ID, "state"), "SUCCEEDED"))
assert driver.find_element(By.ID, "items").text == "4/4", driver.find_element(By.ID, "items").text

# The list shows them, live.
driver.get(URL + "/#/jobs")
wait.until(lambda d: all(d.find_elements(By.CSS_SELECTOR, f'tr[data-job="{j}"]') for j in (first, second, third)))
shot("jobs")
driver.get(URL + "/#/pipelines")
wait.until(EC.presence_of_element_located((By.ID, "pipelines")))
shot("pipelines")
driver.get(URL + "/#/keys")
wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#keys tr")) >= 2)
shot("keys")

# Another account's key sees none of these jobs, even by their ids.
driver.find_element(By.ID, "signout").click()
sign_in(OTHER, "globex")
wait.until(EC.presence_of_element_located((By.ID, "nojobs")))
assert all(j not in driver.page_source for j in (first, second, third))
driver.get(URL + f"/#/jobs/{first}")
wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "main .error"))
assert "SUCCEEDED" not in driver.find_element(By.ID, "main").text

driver.quit()
print("all checks passed")
