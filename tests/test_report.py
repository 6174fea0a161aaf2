"""The tiny run's report as a researcher opens it: the zip report, unpacked, in headless Chromium.

Chromium comes from Debian's packages, installed here when missing; the browser test is skipped,
with the reason, only where it cannot be installed.
"""

import subprocess
import zipfile

import pytest
from plotly.offline import get_plotlyjs

import debian_packages
from workflow_run import snakemake

pytestmark = pytest.mark.slow

MAX_REPORT_BYTES = 25 * 2**20


@pytest.fixture(scope="module")
def report(tiny_workflow, tmp_path_factory):
    """(the zip report, the folder it is unpacked in)."""
    out = tmp_path_factory.mktemp("report")
    path = out / "report.zip"
    made = snakemake(tiny_workflow, "--report", str(path))
    # docutils reports a caption it cannot render (e.g. |x| read as a substitution) and goes on.
    assert "(ERROR/" not in made.stdout + made.stderr, made.stderr[-2000:]
    with zipfile.ZipFile(path) as archive:
        archive.extractall(out / "unpacked")
    return path, out / "unpacked" / "report"


def test_report_has_every_figure_with_its_caption(report):
    path, unpacked = report
    html = (unpacked / "report.html").read_text()
    figures = ["training_curve.png", "comparison.png", "ablation_heatmaps.png",
               "position_fail_rate.png", "quanta_map.png", "sankey.png", "faithfulness.png",
               "index.html"]
    for figure in figures:
        assert figure in html, figure
    for caption in ("Training curve of the built-in model", "Sweep summary over every",
                    "Node ablation of model", "Token-position ablation of model",
                    "Quanta map of model", "Top edges found by edge attribution patching",
                    "Faithfulness of EAP circuits", "The interactive versions of the workflow"):
        assert caption in html, caption


def test_report_holds_plotly_js_once(report):
    path, unpacked = report
    header = get_plotlyjs()[:200]
    with_bundle = [p for p in unpacked.rglob("*") if p.is_file() and header in p.read_text(
        errors="ignore")]
    assert [p.name for p in with_bundle] == ["plotly.min.js"]
    assert path.stat().st_size < MAX_REPORT_BYTES


@pytest.fixture(scope="module")
def chromium():
    try:
        debian_packages.ensure_installed(("chromium",), ("chromium",))
    except debian_packages.Unavailable as reason:
        pytest.skip(f"no Chromium: {reason}")
    return "chromium"


def rendered_dom(chromium: str, page) -> str:
    """The page's DOM after its scripts ran, as headless Chromium leaves it."""
    result = subprocess.run(
        [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=20000",
         "--dump-dom", page.as_uri()],
        capture_output=True, text=True, timeout=120, check=True,
    )
    return result.stdout


def test_interactive_figures_draw_in_chromium(report, chromium):
    _, unpacked = report
    [index] = unpacked.glob("data/raw/*/index.html")
    sankey = index.parent / "sorter" / "sort" / "eap" / "INPUT_VALUE" / "sankey.html"
    assert f'href="{sankey.relative_to(index.parent).as_posix()}"' in index.read_text()
    dom = rendered_dom(chromium, sankey)
    # plotly draws into an <svg class="main-svg">, with the figure's title as text.
    assert 'class="main-svg"' in dom
    assert "EAP top edges: sorter / sort / INPUT_VALUE" in dom
    # The report's own page lists the interactive figures.
    assert "Interactive figures" in rendered_dom(chromium, unpacked / "report.html")
