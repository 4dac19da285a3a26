"""The environment the course installs, and the one repository address its launch buttons use.

requirements.in names the packages the course installs directly; requirements.txt is the lock made
from it by `make lock` (every package, dependencies included, each with its hashes); `make` installs
from the lock, hash-checked; runtime.txt tells Binder, and the lock, which Python.
"""

import re
import sys
from importlib import metadata
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]

# Installed but not from the lock: the course's own package (installed from the clone) and the
# installer that `python -m venv` brings.
NOT_LOCKED = {"course-code", "pip"}


def requirement_lines(path: Path) -> list[str]:
    """The requirements of a pip requirements file, each with its continuation lines joined, comments dropped."""
    text = path.read_text().replace("\\\n", " ")
    lines = (re.sub(r"(^|\s)#.*", "", line).strip() for line in text.splitlines())
    return [line for line in lines if line]


def lock() -> dict[str, tuple[Requirement, list[str]]]:
    """The lock's requirements that apply to this Python and platform, by name, with their hashes."""
    locked = {}
    for line in requirement_lines(ROOT / "requirements.txt"):
        spec, *hashes = re.split(r"\s+--hash=", line)
        requirement = Requirement(spec)
        if requirement.marker is None or requirement.marker.evaluate():
            locked[canonicalize_name(requirement.name)] = (requirement, hashes)
    return locked


def pinned_version(requirement: Requirement) -> str:
    (specifier,) = requirement.specifier
    return specifier.version


def test_lock_pins_every_package_exactly_with_hashes():
    entries = requirement_lines(ROOT / "requirements.txt")
    assert len(entries) > 50, f"requirements.txt holds {len(entries)} requirements: is it the lock?"
    for line in entries:
        spec, *hashes = re.split(r"\s+--hash=", line)
        requirement = Requirement(spec)
        assert [s.operator for s in requirement.specifier] == ["=="], f"not pinned exactly: {spec}"
        assert hashes and all(re.fullmatch(r"sha256:[0-9a-f]{64}", h) for h in hashes), f"no sha256 hash: {spec}"


def test_lock_was_made_from_requirements_in():
    """Every package named in requirements.in is in the lock at a version it allows: run `make lock`
    after changing requirements.in."""
    locked = lock()
    for line in requirement_lines(ROOT / "requirements.in"):
        requirement = Requirement(line)
        name = canonicalize_name(requirement.name)
        assert name in locked, f"{requirement.name} is in requirements.in but not in the lock: run `make lock`"
        version = pinned_version(locked[name][0])
        assert requirement.specifier.contains(version, prereleases=True), (
            f"requirements.in asks for {requirement}, the lock has {version}: run `make lock`")


def test_lock_is_for_the_python_in_runtime_txt():
    """Binder builds with runtime.txt's Python; the lock is made for it and this environment runs it."""
    runtime = (ROOT / "runtime.txt").read_text().strip()
    assert re.fullmatch(r"python-3\.\d+", runtime), f"runtime.txt should read python-3.N, not {runtime!r}"
    version = runtime.removeprefix("python-")
    assert f"{sys.version_info.major}.{sys.version_info.minor}" == version, (
        f"the tests run on Python {sys.version.split()[0]}, the lock is for {version}")
    assert "LOCK_PYTHON" in (ROOT / "Makefile").read_text() and "runtime.txt" in (ROOT / "Makefile").read_text()


def test_installed_environment_matches_the_lock():
    """The environment the tests run in holds exactly the lock: same packages, same versions. After
    the lock changed, `make` rebuilds .venv from it."""
    locked = lock()
    installed = {canonicalize_name(d.metadata["Name"]): d.version for d in metadata.distributions()}
    wrong = {name: (pinned_version(req), installed.get(name, "missing")) for name, (req, _) in locked.items()
             if installed.get(name) != pinned_version(req)}
    assert not wrong, f"locked version and installed version differ: {wrong}"
    extra = sorted(set(installed) - set(locked) - NOT_LOCKED)
    assert not extra, f"installed but not in the lock: {extra}"


# The repository address: _config.yml holds it; the launch buttons, the notebooks' install guard
# (tests/test_book.py) and the README's links are made from it.

def config() -> dict:
    return yaml.safe_load((ROOT / "_config.yml").read_text())


def launch_links(notebook: str) -> dict[str, str]:
    """The Binder and Colab addresses of a notebook, as Jupyter Book's launch buttons make them."""
    repository, buttons = config()["repository"], config()["launch_buttons"]
    owner_name = re.fullmatch(r"https://github\.com/([^/]+/[^/]+?)/?", repository["url"]).group(1)
    path = "/".join(p for p in (repository.get("path_to_book", "").strip("/"), notebook) if p)
    branch = repository["branch"]
    return {"binder": f"{buttons['binderhub_url']}/v2/gh/{owner_name}/{branch}?urlpath=lab/tree/{path}",
            "colab": f"{buttons['colab_url']}/github/{owner_name}/blob/{branch}/{path}"}


def test_config_repository_address_is_a_github_repository():
    url = config()["repository"]["url"]
    assert re.fullmatch(r"https://github\.com/[\w.-]+/[\w.-]+", url), (
        f"_config.yml's repository.url must be https://github.com/OWNER/NAME (the launch buttons need it): {url}")
    assert config()["launch_buttons"]["notebook_interface"] == "jupyterlab"


def test_readme_links_are_made_from_the_config_address():
    readme = (ROOT / "README.md").read_text()
    links = launch_links("book/tour.ipynb")
    for service, link in links.items():
        assert f"({link})" in readme, f"the README's {service} link should be {link}"
    url = config()["repository"]["url"]
    owner_name = url.removeprefix("https://github.com/")
    name = owner_name.split("/")[1]
    for page in [ROOT / "README.md", *sorted((ROOT / "book").glob("*.md"))]:
        text = page.read_text()
        # Addresses of the course itself: launch links, clone and install commands, and any GitHub link to a
        # repository of the course's name (links to other projects, such as a tool's home, are not the course's).
        named = set(re.findall(r"(?:/v2/gh|colab\.research\.google\.com/github|git\+https://github\.com|git clone https://github\.com)"
                               r"/([\w-]+/[\w-]+)", text))
        named |= {m for m in re.findall(r"github\.com/([\w-]+/[\w-]+)", text) if m.split("/")[1] == name}
        assert named <= {owner_name}, f"{page.name} names other repositories than {url}: {sorted(named - {owner_name})}"


def test_built_launch_buttons_use_the_config_address():
    """The buttons Jupyter Book put on the built tour page open the same addresses as the README."""
    page = ROOT / "_build" / "html" / "book" / "tour.html"
    if not page.exists():
        pytest.skip("the book is not built (make book)")
    html = page.read_text().replace("&amp;", "&")
    for service, link in launch_links("book/tour.ipynb").items():
        assert link in html, f"the built {service} button does not open {link}"
    assert f'href="{config()["repository"]["url"]}"' in html, "the repository button does not open the configured address"


def test_install_guard_script_changes_only_the_address(tmp_path):
    """scripts/install_guard.py rewrites the address in the first code cell and nothing else."""
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        import install_guard
    finally:
        sys.path.remove(str(ROOT / "scripts"))
    notebook = tmp_path / "tour.ipynb"
    original = (ROOT / "book" / "tour.ipynb").read_text()
    notebook.write_text(original)
    url, moved = config()["repository"]["url"], "https://github.com/someone/elsewhere"
    assert not install_guard.point_guard(notebook, url), "the committed tour does not install from _config.yml's address"
    assert notebook.read_text() == original
    assert install_guard.point_guard(notebook, moved)
    assert notebook.read_text() == original.replace(f"git+{url}", f"git+{moved}")
    assert original.count(f"git+{url}") == 1
