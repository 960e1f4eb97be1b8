#!/usr/bin/env bash
# The Debian packages the plugin's tests and demo need (QGIS and its Python, GDAL, Xvfb, venv), installed when missing.
# Used by `make` (every target that needs QGIS) and so by CI. Elsewhere than Debian/Ubuntu it only says what to do.
set -euo pipefail
packages=(qgis python3-qgis python3-gdal gdal-bin xvfb python3-venv)
if ! command -v dpkg-query > /dev/null; then
    echo "not a Debian/Ubuntu system: install QGIS 3.22+ with its Python bindings and GDAL yourself"
    exit 0
fi
missing=()
for package in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || missing+=("$package")
done
if ((${#missing[@]} == 0)); then
    exit 0
fi
echo "installing Debian packages: ${missing[*]}"
sudo_cmd=""
if [ "$(id -u)" -ne 0 ]; then sudo_cmd="sudo"; fi
$sudo_cmd apt-get update -q
DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -q --no-install-recommends "${missing[@]}"
