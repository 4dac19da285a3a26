"""The path a launch button takes, offline: a Python without course_code runs a chapter's first cell,
which installs course_code from the repository, and then the rest of the tour.

The repository address in the first cell is replaced by this clone (``file://``), so the package
that gets installed is the clone's committed HEAD, cloned and built by ``pip install git+URL`` as on
Colab. To stay fast and offline, the new environment sees the packages already installed here
(linked, never modified; course_code left out), pip is given no index, and course_code is built
with the linked setuptools instead of an isolated build environment fetched from the index. If
course_code declared a dependency that is not installed, or its wheel missed a file it needs, the
install or the notebook fails.
"""

import json
import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import nbformat
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "book" / "tour.ipynb"

# Runs in the new environment: execute the notebook with its first cell pointed at the clone, then
# one more cell that says where course_code was imported from.
DRIVER = """
import sys, nbformat
from nbclient import NotebookClient
source, target, url, clone, workdir = sys.argv[1:]
nb = nbformat.read(source, as_version=4)
first = next(cell for cell in nb.cells if cell.cell_type == "code")
assert url in first.source, f"the first code cell does not mention {url}"
first.source = first.source.replace(url, clone)
nb.cells.append(nbformat.v4.new_code_cell("import course_code, sys; print(sys.prefix); print(course_code.__file__)"))
NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": workdir}}).execute()
nbformat.write(nb, target)
"""


def link_dependencies(source: Path, target: Path) -> list[str]:
    """Symlink every entry of the site-packages `source` into `target`, except course_code's own."""
    linked = []
    for entry in source.iterdir():
        if not entry.name.startswith(("course_code", "__editable__", "_course_code")):
            (target / entry.name).symlink_to(entry)
            linked.append(entry.name)
    return linked


def clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without what would let the new Python find course_code or an index."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PIP_", "PYTHON", "VIRTUAL_ENV", "JUPYTER"))}
    return env | extra


def test_launch_path_installs_course_code_and_runs_the_tour(tmp_path):
    if not (ROOT / ".git").exists():
        pytest.fail(f"{ROOT} is not a git clone: the install guard installs course_code with `pip install git+URL`")
    url = yaml.safe_load((ROOT / "_config.yml").read_text())["repository"]["url"]
    venv, workdir = tmp_path / "venv", tmp_path / "work"
    workdir.mkdir()
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", venv], check=True)
    python = venv / "bin" / "python"
    site = Path(subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                               check=True, capture_output=True, text=True).stdout.strip())
    linked = link_dependencies(Path(sysconfig.get_path("purelib")), site)
    assert any(name.startswith("torch-") for name in linked), "nothing to link: is torch installed here?"
    # pip's configuration files are ignored, its index switched off; PIP_NO_BUILD_ISOLATION=0 means
    # "no build isolation" (pip reads the variable as the value of --no-build-isolation's destination).
    env = clean_env(PIP_NO_INDEX="1", PIP_CONFIG_FILE=os.devnull, PIP_NO_BUILD_ISOLATION="0",
                    PIP_DISABLE_PIP_VERSION_CHECK="1", COURSE_PROGRESS="0")
    if not (site / "pip").exists():  # an environment made by uv has no pip: give the new one its own
        subprocess.run([python, "-m", "ensurepip"], check=True, env=env, capture_output=True)
    before = subprocess.run([python, "-c", "import course_code"], cwd=workdir, env=env, capture_output=True, text=True)
    assert before.returncode != 0 and "No module named 'course_code'" in before.stderr, (
        "the new environment must start without course_code:\n" + before.stderr)

    executed = tmp_path / "tour.ipynb"
    run = subprocess.run([python, "-c", DRIVER, NOTEBOOK, executed, url, f"file://{ROOT}", workdir],
                         cwd=workdir, env=env, capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, f"the tour failed in the new environment:\n{run.stderr[-4000:]}"

    nb = nbformat.read(executed, as_version=4)
    code = [cell for cell in nb.cells if cell.cell_type == "code"]
    errors = [o for cell in code for o in cell.outputs if o.output_type == "error"]
    assert not errors, f"the tour raised {errors[0].ename}: {errors[0].evalue}"
    prefix, module = [o.text for o in code[-1].outputs if o.output_type == "stream"][0].split()
    assert Path(prefix) == venv, f"the notebook ran in {prefix}, not in the new environment {venv}"
    installed = Path(module).resolve()
    assert installed.is_relative_to(site.resolve()) and not installed.is_relative_to(ROOT), (
        f"course_code was imported from {installed}, not installed into the new environment")
    direct_url = json.loads(next(site.glob("course_code-*.dist-info")).joinpath("direct_url.json").read_text())
    assert direct_url["url"] == f"file://{ROOT}" and "vcs_info" in direct_url, direct_url

    first_output = "".join(o.get("text", "") for o in code[0].outputs)
    assert "course_code " in first_output, f"the first cell did not run course_code.setup():\n{first_output}"
    committed = nbformat.read(NOTEBOOK, as_version=4)
    assert printed(nb.cells[:-1]) == printed(committed.cells), "the tour printed other text than its committed outputs"


def printed(cells) -> list[str]:
    """What each code cell after the first printed, one string per cell."""
    code = [cell for cell in cells if cell.cell_type == "code"][1:]
    return ["".join(o.text for o in cell.outputs if o.output_type == "stream") for cell in code]


def test_jupyterlab_opens_the_chapters_as_the_how_to_page_says(tmp_path):
    """`.venv/bin/jupyter lab book/` (the how-to page's command) starts, offline, and serves the chapters."""
    import secrets
    import socket
    import time
    import urllib.request

    assert ".venv/bin/jupyter lab book/" in (ROOT / "book" / "how-to-use.md").read_text()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    token = secrets.token_hex(8)
    env = {**os.environ, "JUPYTER_RUNTIME_DIR": str(tmp_path / "runtime"), "JUPYTER_CONFIG_DIR": str(tmp_path / "config")}
    server = subprocess.Popen(
        [str(Path(sys.executable).with_name("jupyter")), "lab", "book/", "--no-browser", f"--port={port}",
         "--ServerApp.ip=127.0.0.1", f"--IdentityProvider.token={token}", "--allow-root"],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"{base}/api/contents?token={token}", timeout=5) as response:
                    listing = json.load(response)
                break
            except OSError:
                assert server.poll() is None, f"jupyter lab exited: {server.stderr.read()[-2000:]}"
                assert time.monotonic() < deadline, "jupyter lab did not answer within 60 s"
                time.sleep(0.5)
        names = {item["name"] for item in listing["content"]}
        assert "tour.ipynb" in names and "01_autoencoders.ipynb" in names, names
        with urllib.request.urlopen(f"{base}/lab?token={token}", timeout=10) as response:
            assert response.status == 200 and "JupyterLab" in response.read().decode()
    finally:
        server.terminate()
        server.wait(timeout=30)
