"""`make package`: the plugin zip (with its backend) and the plugins.xml of a custom plugin repository.

Builds with qgis-plugin-ci (the maintained tool for QGIS plugin zips and
repository XML) in a staging copy of this tree, so the developer's checkout
is never touched:

1. copy the files git knows (tracked, and untracked but not ignored);
2. put the backend's source (``segearth_backend`` and its ``pyproject.toml``,
   no tests, no weights) inside the plugin as ``segearth_qgis/backend/``, so
   plugin and backend versions always match and *Set up backend…* can install it;
3. stamp ``metadata.txt`` with the one version (``segearth_backend.__version__``)
   and the links of ``packaging/project.ini``; while those links are
   placeholders the build is a development build: ``-dev`` in the version and
   the zip's name, and a line in the metadata's ``about``;
4. run ``qgis-plugin-ci package`` and copy the zip, ``plugins.xml`` and its
   stylesheet to ``dist/``.
"""

from __future__ import annotations

import argparse
import configparser
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Optional

ROOT = Path(__file__).resolve().parents[1]
PLUGIN = "segearth_qgis"
PROJECT = ROOT / "packaging" / "project.ini"
BACKEND_FILES = ("pyproject.toml", "README.md")
DEV_NOTE = ("Development build: the project's public pages (homepage, tracker, repository) are not published yet; "
            "report problems to the address below.")


def backend_version(root: Path = ROOT) -> str:
    text = (root / "backend" / "segearth_backend" / "__init__.py").read_text(encoding="utf-8")
    match = re.search(r'^__version__ = "([^"]+)"', text, re.M)
    if match is None:
        raise SystemExit("package: no __version__ in backend/segearth_backend/__init__.py")
    return match.group(1)


def project_links(path: Path = PROJECT) -> tuple[dict[str, str], bool, str]:
    """(homepage/tracker/repository, published?, plugin repository URL) from ``packaging/project.ini``."""
    parser = configparser.ConfigParser()
    parser.read(path, encoding="utf-8")
    links = {key: parser["links"][key] for key in ("homepage", "tracker", "repository")}
    published = parser["links"].getboolean("published", fallback=False)
    return links, published, parser["plugin-repository"]["url"].rstrip("/") + "/"


def tree_files(root: Path = ROOT) -> list[str]:
    """The files git knows: tracked, plus untracked ones that are not ignored."""
    result = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"], cwd=root,
                            capture_output=True, check=True)
    return [name for name in result.stdout.decode().split("\0") if name and (root / name).is_file()]


def stamp_metadata(path: Path, version: str, links: dict[str, str], development: bool) -> None:
    """Version and links into ``metadata.txt`` (line by line: QGIS's format is not quite an INI)."""
    lines = path.read_text(encoding="utf-8").splitlines()
    values = {"version": version, **links}
    out = []
    for line in lines:
        key = line.split("=", 1)[0].strip()
        if key in values:
            line = f"{key}={values.pop(key)}"
        elif key == "about" and development:
            line = f"{line} {DEV_NOTE}"
        elif key == "experimental" and development:
            line = "experimental=True"
        out.append(line)
    out += [f"{key}={value}" for key, value in values.items()]
    path.write_text("\n".join(out) + "\n", encoding="utf-8")


def stage(staging: Path, version: str, links: dict[str, str], development: bool) -> None:
    for name in tree_files():
        target = staging / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, target)
    bundled = staging / PLUGIN / "backend"
    shutil.copytree(ROOT / "backend" / "segearth_backend", bundled / "segearth_backend",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    for name in BACKEND_FILES:
        shutil.copy2(ROOT / "backend" / name, bundled / name)
    (staging / PLUGIN / "backend_python.txt").unlink(missing_ok=True)  # a developer's interpreter never ships
    stamp_metadata(staging / PLUGIN / "metadata.txt", version, links, development)
    (staging / ".qgis-plugin-ci").write_text(f"plugin_path: {PLUGIN}\nproject_slug: segearth-ov-qgis\n",
                                             encoding="utf-8")
    git = ["git", "-c", "user.name=segearth-package", "-c", "user.email=package@localhost",
           "-c", "commit.gpgsign=false"]
    subprocess.run([*git, "init", "-q"], cwd=staging, check=True)
    subprocess.run([*git, "add", "-A"], cwd=staging, check=True)
    subprocess.run([*git, "commit", "-q", "-m", f"package {version}"], cwd=staging, check=True)


def qgis_plugin_ci() -> list[str]:
    found = shutil.which("qgis-plugin-ci") or str(Path(sys.executable).with_name("qgis-plugin-ci"))
    if not Path(found).is_file():
        raise SystemExit("package: qgis-plugin-ci is not installed: run `make install` (it is a test/dev tool).")
    return [found]


def build(out: Path, development: Optional[bool] = None) -> tuple[Path, Path, list[str]]:
    """Build into ``out``; returns (zip, plugins.xml, reasons it is a development build)."""
    version = backend_version()
    links, published, repository = project_links()
    reasons = [] if published else ["packaging/project.ini says the project's links are not published yet"]
    dev = bool(reasons) if development is None else development
    if dev:
        version += "-dev"
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="segearth-package-") as tmp, \
            tempfile.TemporaryDirectory(prefix="segearth-package-scratch-") as scratch:
        staging = Path(tmp)
        stage(staging, version, links, dev)
        # qgis-plugin-ci leaves its git archive (a .tar) in the temporary folder: give it one removed with ours.
        result = subprocess.run([*qgis_plugin_ci(), "package", version, "--disable-submodule-update",
                                 "--plugin-repo-url", repository], cwd=staging, capture_output=True, text=True,
                                env={**os.environ, "TMPDIR": scratch})
        if result.returncode != 0:
            raise SystemExit(f"package: qgis-plugin-ci failed:\n{result.stdout[-2000:]}{result.stderr[-2000:]}")
        archive = staging / f"{PLUGIN}.{version}.zip"
        for name in (archive.name, "plugins.xml", "plugins.xsl"):
            if (staging / name).is_file():
                shutil.copy2(staging / name, out / name)
    return out / archive.name, out / "plugins.xml", reasons


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "dist")
    archive, xml, reasons = build(parser.parse_args().out)
    print(f"wrote {archive}\nwrote {xml} (a custom plugin repository: serve it with the zip)")
    for reason in reasons:
        print(f"development build: {reason}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
