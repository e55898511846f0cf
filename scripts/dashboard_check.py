#!/usr/bin/env python3
"""Loads the dashboard in headless Chromium and reports what the rendered page shows.

    dashboard_check.py BASE_URL KEY SCREENSHOT.png [TIMEOUT_SECONDS]

Chromium is driven over the DevTools protocol on a pipe (--remote-debugging-pipe: JSON messages ended by NUL on
file descriptors 3 and 4), so nothing but Chromium and Python's standard library is needed. The script signs in
(/login?key=...), waits until the page's event stream is connected and the page has updated itself from a live
event at least once and shows jobs finished since its first render, then prints one JSON object read from the DOM (job counts, campaigns with their burn-down,
provider rows) and saves a screenshot. Exit 0 when the page went live in time, 1 otherwise.
"""
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time


def main():
    base, key, screenshot = sys.argv[1], sys.argv[2], sys.argv[3]
    timeout = float(sys.argv[4]) if len(sys.argv) > 4 else 30
    # Debian's /usr/bin/chromium is a shell wrapper; the binary itself takes the pipe as given.
    chromium = next((path for path in ["/usr/lib/chromium/chromium"] if os.access(path, os.X_OK)), None) or \
        shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if not chromium:
        print(json.dumps({"error": "no chromium on PATH"}))
        return 2
    # Pipes above fd 4, so that putting them at 3 and 4 in the child never overwrites one with the other.
    spare = [os.open(os.devnull, os.O_RDONLY) for _ in range(3)]
    to_chrome_r, to_chrome_w = os.pipe()
    from_chrome_r, from_chrome_w = os.pipe()
    for fd in spare:
        os.close(fd)
    profile = tempfile.mkdtemp(prefix="pargen-chromium-")

    def child_fds():
        os.dup2(to_chrome_r, 3)
        os.dup2(from_chrome_w, 4)

    process = subprocess.Popen(
        [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
         "--remote-debugging-pipe", f"--user-data-dir={profile}", "--window-size=1400,1600",
         "--no-first-run", "--no-default-browser-check", f"{base}/login?key={key}"],
        pass_fds=(3, 4, to_chrome_r, from_chrome_w), preexec_fn=child_fds,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    os.close(to_chrome_r)
    os.close(from_chrome_w)
    writer = os.fdopen(to_chrome_w, "wb", buffering=0)
    reader = os.fdopen(from_chrome_r, "rb", buffering=0)
    pending = b""
    next_id = [0]

    def send(method, params=None, session=None):
        next_id[0] += 1
        message = {"id": next_id[0], "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        writer.write(json.dumps(message).encode() + b"\0")
        return wait_for(next_id[0])

    def wait_for(number):
        nonlocal pending
        while True:
            while b"\0" in pending:
                raw, pending = pending.split(b"\0", 1)
                message = json.loads(raw)
                if message.get("id") == number:
                    if "error" in message:
                        raise RuntimeError(message["error"])
                    return message.get("result", {})
            chunk = reader.read(1 << 16)
            if not chunk:
                raise RuntimeError("chromium closed the pipe")
            pending += chunk

    deadline = time.time() + timeout
    result = {"live": False}
    try:
        session = None
        while session is None and time.time() < deadline:
            targets = send("Target.getTargets")["targetInfos"]
            pages = [t for t in targets if t["type"] == "page"]
            if pages:
                session = send("Target.attachToTarget", {"targetId": pages[0]["targetId"], "flatten": True})["sessionId"]
            else:
                time.sleep(0.1)
        probe = """(() => {
          const b = document.body; if (!b) return null;
          const counts = {}; for (const c of document.querySelectorAll('[data-count]')) counts[c.dataset.count] = Number(c.textContent);
          const campaigns = [...document.querySelectorAll('#campaigns tr[data-campaign]')].map(r => ({
            name: r.dataset.campaign,
            progress: r.querySelector('[data-field=progress]').textContent,
            spent: r.querySelector('[data-field=spent]').textContent,
            budget: r.querySelector('[data-field=budget]').textContent,
            spentWidth: Number(r.querySelector('svg.burn .spent').getAttribute('width')),
            hasBudgetLine: !!r.querySelector('svg.burn .budget-line'),
            alert: (r.querySelector('svg.burn .budget-alert') || {}).textContent || null }));
          const providers = [...document.querySelectorAll('#providers tr[data-provider]')].map(r => ({
            name: r.dataset.provider, window: r.querySelector('[data-field=window]').textContent,
            slots: r.querySelector('[data-field=slots]').textContent, circuit: r.querySelector('[data-field=circuit]').textContent,
            sparkPoints: (r.querySelector('polyline').getAttribute('points') || '').trim().split(' ').filter(x => x).length }));
          return {live: b.dataset.live, updates: Number(b.dataset.updates), initial: JSON.parse(b.dataset.initial || '{}'), counts, campaigns, providers,
                  jobRows: document.querySelectorAll('#jobs tr[data-job]').length, title: document.title};
        })()"""
        while time.time() < deadline:
            value = send("Runtime.evaluate", {"expression": probe, "returnByValue": True}, session)
            page = value.get("result", {}).get("value")
            # Connected, refreshed from live events, and showing jobs finished since the first render (or none left).
            moved = page and (page.get("counts", {}).get("succeeded") != page.get("initial", {}).get("succeeded")
                              or page.get("counts", {}).get("available", 0) + page.get("counts", {}).get("running", 0) == 0)
            if page and page.get("live") == "connected" and page.get("updates", 0) >= 2 and moved:
                result = dict(page, live=True)
                break
            if page:
                result = dict(page, live=False)
            time.sleep(0.25)
        if session:
            shot = send("Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True}, session)
            with open(screenshot, "wb") as file:
                import base64
                file.write(base64.b64decode(shot["data"]))
    except Exception as error:  # noqa: BLE001 - reported in the JSON, the exit code says it failed
        result["error"] = str(error)
    finally:
        try:
            writer.write(json.dumps({"id": 999999, "method": "Browser.close"}).encode() + b"\0")
        except OSError:
            pass
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
        shutil.rmtree(profile, ignore_errors=True)
    print(json.dumps(result))
    return 0 if result.get("live") else 1


if __name__ == "__main__":
    sys.exit(main())
