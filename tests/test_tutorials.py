"""The tutorials in docs/tutorials run as written: each page's ```python blocks, in order, as one script in a fresh
namespace and an empty folder (the real weights; tiny sizes)."""

import re
from pathlib import Path

import matplotlib
import pytest

TUTORIALS = Path(__file__).resolve().parents[1] / "docs" / "tutorials"
PAGES = ["quickstart-2d.md", "volume-properties.md", "research-api.md", "inverse-design.md"]
WRITES = {"quickstart-2d.md": ["example.tif", "comparison.png", "reconstruction_000.tif", "reconstruction_001.tif"],
          "volume-properties.md": ["volume.tif"], "research-api.md": [], "inverse-design.md": ["design.png"]}
BLOCK = re.compile(r"^```python\n(.*?)^```", re.DOTALL | re.MULTILINE)


def tutorial_script(page: Path) -> str:
    """The page's ```python blocks joined in order (other blocks, e.g. ```bash, are not run)."""
    return "\n".join(BLOCK.findall(page.read_text(encoding="utf-8")))


def test_every_tutorial_is_tested():
    assert sorted(p.name for p in TUTORIALS.glob("*.md")) == sorted(PAGES)
    for name in PAGES:
        assert tutorial_script(TUTORIALS / name).count("\n") > 5, name


def test_blocks_are_extracted_in_order(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("intro\n```python\na = 1\n```\n\n```bash\nls\n```\nmore\n```python\nb = a + 1\n```\n",
                    encoding="utf-8")
    assert tutorial_script(page) == "a = 1\n\nb = a + 1\n"
    namespace = {}
    exec(compile(tutorial_script(page), str(page), "exec"), namespace)
    assert namespace["b"] == 2


@pytest.mark.real_weights
@pytest.mark.slow
@pytest.mark.parametrize("name", PAGES)
def test_tutorial_runs(name, tmp_path, monkeypatch):
    matplotlib.use("Agg")
    monkeypatch.chdir(tmp_path)
    page = TUTORIALS / name
    exec(compile(tutorial_script(page), str(page), "exec"), {"__name__": "__main__"})
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(WRITES[name])  # what the page says, complete
