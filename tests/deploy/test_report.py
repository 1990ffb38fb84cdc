"""report.html / report.json: content, self-containedness, and rendering in real headless Chromium."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from edgetrim.deploy.report import pareto_front, run_entry, write_report
from edgetrim.errors import EdgetrimError

CHROMIUM = shutil.which("chromium") or ("/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None)


@pytest.fixture(scope="module")
def report_dir(tmp_path_factory: pytest.TempPathFactory, trained_net, run_factory) -> Path:
    root = tmp_path_factory.mktemp("report")
    net, acc = trained_net
    runs = [
        run_factory(
            root / "run_a", net, acc, predicted_ms=0.05, dense_predicted_ms=0.3, dense_accuracy=acc + 0.1
        ),
        run_factory(root / "run_b", net, acc - 0.1, predicted_ms=0.08, dense_accuracy=None),  # dominated
        run_factory(root / "run_c", net, acc + 0.05, predicted_ms=0.2, dense_accuracy=None),
    ]
    write_report([run_entry(r) for r in runs], root / "out")
    return root / "out"


def test_pareto_front_keeps_only_undominated_points() -> None:
    pts = [(0.05, 0.8), (0.08, 0.7), (0.2, 0.85), (0.3, 0.85)]
    assert pareto_front(pts) == [(0.05, 0.8), (0.2, 0.85)]


def test_report_json_has_pareto_and_widths(report_dir: Path) -> None:
    data = json.loads((report_dir / "report.json").read_text())
    assert [p[0] for p in data["pareto"]["front"]] == [0.05, 0.2, 0.3]  # run_a, run_c, run_a's dense model
    assert {p["run"] for p in data["pareto"]["points"]} == {"run_a", "run_b", "run_c", "run_a (dense)"}
    assert data["widths"]["run_a"]["after"] == [["conv1", 7.0], ["conv2", 5.0], ["fc", 3.0]]
    assert {"pareto", "widths:run_a"} <= set(data["images"])


def test_report_html_is_self_contained(report_dir: Path) -> None:
    html = (report_dir / "report.html").read_text()
    srcs = re.findall(r'(?:src|href)="([^"]*)"', html)
    assert srcs and all(s.startswith("data:image/png;base64,") for s in srcs)
    assert "http://" not in html and "https://" not in html and "<link" not in html and "<script" not in html


def test_report_of_a_run_without_model_is_one_line_error(tmp_path: Path) -> None:
    (tmp_path / "r").mkdir()
    with pytest.raises(EdgetrimError, match="holds no model"):
        run_entry(tmp_path / "r")


@pytest.mark.browser
@pytest.mark.skipif(
    CHROMIUM is None, reason="headless Chromium not installed (apt-get install chromium); .ci/run installs it"
)
def test_report_renders_with_its_images_in_headless_chromium(report_dir: Path, tmp_path: Path) -> None:
    # A copy with a probe script: after load it records on <body> how many images decoded with a size.
    probe = (
        "<script>window.addEventListener('load',()=>{const i=[...document.images];"
        "document.body.setAttribute('data-images',i.length);"
        "document.body.setAttribute('data-decoded',i.filter(x=>x.complete&&x.naturalWidth>0).length);});</script>"
    )
    page = tmp_path / "probe.html"
    page.write_text((report_dir / "report.html").read_text().replace("</body>", probe + "</body>"))
    flags = [
        CHROMIUM,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        f"--user-data-dir={tmp_path / 'profile'}",
        "--virtual-time-budget=5000",
    ]
    dom = subprocess.run([*flags, "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=120)
    assert dom.returncode == 0, dom.stderr[-2000:]
    n_images = int(re.search(r'data-images="(\d+)"', dom.stdout).group(1))
    n_decoded = int(re.search(r'data-decoded="(\d+)"', dom.stdout).group(1))
    assert n_images >= 3 and n_decoded == n_images
    shot = tmp_path / "shot.png"
    res = subprocess.run(
        [*flags, f"--screenshot={shot}", "--window-size=1200,1600", (report_dir / "report.html").as_uri()],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode == 0 and shot.is_file(), res.stderr[-2000:]
    import numpy as np
    from PIL import Image

    pixels = np.asarray(Image.open(shot).convert("L"), dtype=np.float32)
    assert pixels.std() > 10.0  # not a blank page: text, axes and bars
    assert (pixels < 128).mean() > 0.01
