"""The report page of a finished run, as a browser shows it."""
import subprocess

import numpy as np
import pytest



def test_report_page_renders_in_a_browser_with_every_heading_and_image(finished_run, tmp_path):
    import base64
    import io
    import re
    import shutil

    from PIL import Image

    browser = next((b for b in ("chromium", "chromium-browser", "google-chrome") if shutil.which(b)), None)
    if browser is None:
        pytest.skip("no headless Chromium on this machine")
    report = finished_run[0] / "report"
    page = (report / "report.html").as_uri()
    flags = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars"]
    dom = subprocess.run(flags + ["--dump-dom", page], capture_output=True, text=True, timeout=120)
    assert dom.returncode == 0, dom.stderr[-2000:]
    markdown = (report / "report.md").read_text()
    headings = [re.sub(r"`", "", h).strip() for h in re.findall(r"^#+ (.+)$", markdown, flags=re.M)]
    shown = [re.sub(r"<[^>]+>", "", h).strip() for h in re.findall(r"<h[1-6]>(.*?)</h[1-6]>", dom.stdout, flags=re.S)]
    assert shown == headings  # every heading, in order, none left as Markdown
    images = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", markdown)
    inlined = re.findall(r'<img[^>]*src="data:image/png;base64,([^"]+)"', dom.stdout)
    assert images and len(inlined) == len(images)  # self-contained: no image left as a file link
    for data in inlined:
        assert Image.open(io.BytesIO(base64.b64decode(data))).size[0] > 100
    assert "<table>" in dom.stdout and "|---" not in dom.stdout  # tables rendered, not printed
    shot = tmp_path / "report.png"
    run = subprocess.run(flags + [f"--screenshot={shot}", "--window-size=1200,3000", page], capture_output=True,
                         timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    img = np.asarray(Image.open(shot).convert("L"))
    assert img.shape == (3000, 1200) and img.std() > 10  # a page with content, not a blank or error page
