"""Open a page in headless Chromium as a reader would: a screenshot at 1280 px, broken images, horizontal scroll.

Chromium runs no test framework here; a probe copy of the page (same folder, so relative links resolve
the same way) carries a tiny script that, once everything loaded, measures the page twice (as opened,
and with every <details> open), checks every <img> loaded (the load event waits for all of them,
those in closed <details> too), and writes the result into the DOM, which
`--dump-dom` prints. The page under test itself stays script-free.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

WIDTH = 1280
CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "chrome")

PROBE = """<script>
window.addEventListener('load', () => {
  const measure = () => ({scroll: document.documentElement.scrollWidth, client: document.documentElement.clientWidth});
  const closed = measure();
  document.querySelectorAll('details').forEach(d => { d.open = true; });
  const imgs = [...document.images];
  const opened = measure();
  const broken = imgs.filter(i => !(i.complete && i.naturalWidth > 0)).map(i => i.getAttribute('src').slice(0, 80));
  const wide = [...document.querySelectorAll('body *')].filter(el => el.getBoundingClientRect().right > WIDTH_PX + 1)
    .slice(0, 5).map(el => el.tagName + '.' + el.className);
  const pre = document.createElement('pre');
  pre.id = 'probe';
  pre.textContent = JSON.stringify({closed, opened, images: imgs.length, broken, wide});
  document.body.appendChild(pre);
});
</script>""".replace("WIDTH_PX", str(WIDTH))


def chromium() -> str | None:
    for name in CHROMIUM_NAMES:
        path = shutil.which(name)
        if path:
            return path
    return None


def _run(args: list[str], timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(args, capture_output=True, text=True, timeout=timeout, check=False)


def inspect_page(page: Path, screenshot: Path, height: int = 2400) -> dict:
    """Screenshot `page` at 1280 px into `screenshot` and return the probe's measurements."""
    binary = chromium()
    if binary is None:  # the caller skips; this is only a guard
        raise RuntimeError("no chromium binary")
    common = [binary, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--allow-file-access-from-files",
              "--disable-dev-shm-usage", f"--window-size={WIDTH},{height}", "--virtual-time-budget=15000"]
    shot = _run(common + [f"--screenshot={screenshot}", page.resolve().as_uri()])
    if not screenshot.is_file():
        raise RuntimeError(f"chromium made no screenshot: {shot.stderr[-2000:]}")
    probe = page.with_name(f".probe-{page.name}")
    probe.write_text(page.read_text(encoding="utf-8").replace("</body>", PROBE + "</body>"), encoding="utf-8")
    try:
        dom = _run(common + ["--dump-dom", probe.resolve().as_uri()])
    finally:
        probe.unlink()
    match = re.search(r'<pre id="probe">(.*?)</pre>', dom.stdout, re.S)
    if not match:
        raise RuntimeError(f"the probe did not run: {dom.stderr[-2000:]}")
    import html

    return json.loads(html.unescape(match.group(1)))
