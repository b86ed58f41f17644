"""The report's page and tables: Markdown to one self-contained HTML file, timings in pipeline order."""
import base64
import re
from types import SimpleNamespace

import numpy as np
from PIL import Image

from tailfill.evaluation.report import _timings, markdown_to_html
from tailfill.run import RunLayout
from tailfill.utils.io import write_json


def test_markdown_becomes_one_self_contained_page(tmp_path):
    Image.fromarray(np.zeros((4, 6, 3), np.uint8)).save(tmp_path / "plot.png")
    text = "# Run `r1`\n\n## Results\n\n| model | bacc |\n|---|---|\n| **a** | 0.5 |\n\n![the plot](plot.png)\n"
    page = markdown_to_html(text, tmp_path, "report <r1>")
    assert "<title>report &lt;r1&gt;</title>" in page
    assert "<h1>Run <code>r1</code></h1>" in page and "<h2>Results</h2>" in page
    assert re.search(r"<table>.*<th>model</th>.*<strong>a</strong>.*</table>", page, flags=re.S)
    data = re.search(r'<img alt="the plot" src="data:image/png;base64,([^"]+)">', page).group(1)
    assert base64.b64decode(data) == (tmp_path / "plot.png").read_bytes()  # inlined, not linked
    assert "<figcaption>the plot</figcaption>" in page and "plot.png" not in page.replace("the plot", "")


def test_stage_timings_follow_the_pipeline_order_and_say_what_was_skipped(tmp_path):
    run = SimpleNamespace(paths=RunLayout(tmp_path))
    for stage, marker in (("report", {"seconds": 1}), ("prepare", {"seconds": 2}),
                          ("train-diffusion", {"seconds": 3, "skipped": "control"}), ("select", {"seconds": 4, "shared": True})):
        write_json(run.paths.marker(stage), marker)
    table = "\n".join(_timings(run, ["prepare", "train-diffusion", "select", "evaluate", "report"]))
    rows = [line.split("|")[1].strip() for line in table.splitlines() if line.startswith("| ") and "stage" not in line]
    assert rows == ["prepare", "train-diffusion", "select", "report"]
    assert "skipped" in table and "shared (sweep)" in table
