"""`make package`: the plugin zip for QGIS's plugin manager (sources, metadata, icon; no caches)."""

from __future__ import annotations

import argparse
import configparser
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PLUGIN = ROOT / "segearth_qgis"
INCLUDE = ("*.py", "metadata.txt", "icon.svg", "*.qml", "*.json")


def plugin_files() -> list[Path]:
    files = {path for pattern in INCLUDE for path in PLUGIN.rglob(pattern)}
    return sorted(p for p in files if "__pycache__" not in p.parts and p.is_file())


def build(out: Path) -> Path:
    metadata = configparser.ConfigParser()
    metadata.read(PLUGIN / "metadata.txt", encoding="utf-8")
    version = metadata["general"]["version"]
    out.mkdir(parents=True, exist_ok=True)
    target = out / f"segearth_qgis-{version}.zip"
    tmp = target.with_suffix(".part")
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for path in plugin_files():
            archive.write(path, Path("segearth_qgis") / path.relative_to(PLUGIN))
    tmp.replace(target)
    return target


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "dist")
    target = build(parser.parse_args().out)
    print(f"wrote {target}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
