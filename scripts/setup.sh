#!/usr/bin/env bash
# Prepares a fresh Debian/Ubuntu machine for advguard (idempotent): system packages for
# GStreamer, gst-rtsp-server and Mosquitto (used by the tests), a font for plots, and the
# ONNX Runtime wheel (its libonnxruntime.so backs `--backend ort`). Then builds advguard.
#   bash scripts/setup.sh            # deps + release build
#   bash scripts/setup.sh --deps     # deps only (CI)
set -euo pipefail
cd "$(dirname "$0")/.."

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi

PKGS=(pkg-config libgstreamer1.0-dev libgstreamer-plugins-base1.0-dev libgstrtspserver-1.0-dev
      gstreamer1.0-plugins-base gstreamer1.0-plugins-good gstreamer1.0-plugins-bad
      gstreamer1.0-plugins-ugly gstreamer1.0-libav gstreamer1.0-tools
      mosquitto mosquitto-clients fonts-dejavu-core python3-pip chromium)
missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "== installing: ${missing[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
# The bundled Mosquitto service is not wanted: tests start their own brokers on free ports.
if command -v systemctl >/dev/null 2>&1; then $SUDO systemctl disable --now mosquitto >/dev/null 2>&1 || true; fi

if ! python3 -c "import onnxruntime" >/dev/null 2>&1; then
  echo "== installing the onnxruntime wheel (for --backend ort)"
  python3 -m pip install -q onnxruntime==1.32.0 2>/dev/null \
    || python3 -m pip install -q --break-system-packages onnxruntime==1.32.0
fi
# onnx + onnx-ad: the external gradient reference (tests/reference/onnx_ad_response.py)
if ! python3 -c "import onnx, onnx_ad" >/dev/null 2>&1; then
  echo "== installing onnx and onnx-ad (external gradient reference for the tests)"
  python3 -m pip install -q onnx==1.23.2 onnx-ad==0.3.0 2>/dev/null \
    || python3 -m pip install -q --break-system-packages onnx==1.23.2 onnx-ad==0.3.0
fi

if [ "${1:-}" != "--deps" ]; then
  echo "== building advguard (release)"
  cargo build --release --locked
fi
