#!/usr/bin/env bash
# End-to-end tests: a real ComfyUI (CPU) with this pack and tiny models, driven by a real Chromium.
# Sets up what is missing, then runs tests/e2e. See docs/E2E.md.
#
# Usage: tools/e2e.sh [pytest args...]
# Environment:
#   WANMETER_COMFYUI     ComfyUI checkout (default /tmp/comfy). If it has no main.py, it is exported
#                        from COMFY_SNAPSHOT (a fetched Comfy-Org/ComfyUI git directory) by
#                        ../shared/tools/comfy_setup.sh, which also builds the CPU venv.
#   WANMETER_COMFY_VENV  ComfyUI's venv (default: comfy-venv next to the checkout). The tests run in it.
#   WANMETER_FRONTENDS   frontend versions to run against (default "1.27.10 1.58.1"); a version other than
#                        the venv's is installed into comfy-frontend-<version>/ next to the checkout and
#                        served with --front-end-root. The first one's screenshots go to docs/img/.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$(pwd)
COMFY=${WANMETER_COMFYUI:-/tmp/comfy}
VENV=${WANMETER_COMFY_VENV:-$(dirname "$COMFY")/comfy-venv}
PY="$VENV/bin/python"

if [ ! -f "$COMFY/main.py" ] || [ ! -x "$PY" ]; then
  SETUP="$REPO/../shared/tools/comfy_setup.sh"
  if [ ! -x "$SETUP" ] && [ ! -f "$SETUP" ]; then
    echo "No ComfyUI at $COMFY and no $SETUP to make one. Export ComfyUI 0.3.64 there, or set WANMETER_COMFYUI." >&2
    exit 2
  fi
  COMFY="$COMFY" COMFY_VENV="$VENV" bash "$SETUP" "${COMFY_SNAPSHOT:-}"
fi

# pip install that refuses to touch torch: the venv's torch/torchvision/torchaudio are a matched set.
safe_pip() {
  local plan
  plan=$("$PY" -m pip install --dry-run "$@" 2>&1) || { echo "$plan" >&2; exit 1; }
  if echo "$plan" | grep '^Would install' | grep -qE '(^| )(torch|torchvision|torchaudio)-[0-9]'; then
    echo "Refusing: installing $* would replace torch in $VENV:" >&2
    echo "$plan" | grep '^Would install' >&2
    exit 1
  fi
  if echo "$plan" | grep -q '^Would install'; then "$PY" -m pip install -q "$@"; fi
}
safe_pip -r requirements.txt
# ComfyUI's own optional requirements: without spandrel the frontend logs a TypeError for the missing
# UpscaleModelLoader on every start, which the suite would count as a console error.
safe_pip "kornia>=0.7.1" spandrel
safe_pip pytest playwright

if ! command -v chromium >/dev/null 2>&1 && [ ! -x /usr/bin/chromium ] && [ -z "${WANMETER_CHROMIUM:-}" ]; then
  if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
  else
    echo "Install Chromium (Debian: apt-get install chromium) or set WANMETER_CHROMIUM. Never 'playwright install'." >&2
    exit 2
  fi
fi

# The frontends the suite runs against: the one ComfyUI 0.3.64 pins (in the venv), and a current one
# served with --front-end-root from its own folder (pip --target: the venv stays as it is).
FRONTENDS=${WANMETER_FRONTENDS:-"1.27.10 1.58.1"}
pinned=$("$PY" -c "import importlib.metadata as m; print(m.version('comfyui-frontend-package'))")
status=0
for fe in $FRONTENDS; do
  root=""
  if [ "$fe" != "$pinned" ]; then
    dir="$(dirname "$COMFY")/comfy-frontend-$fe"
    if [ ! -f "$dir/comfyui_frontend_package/static/index.html" ]; then
      "$PY" -m pip install -q --no-deps --target "$dir" "comfyui-frontend-package==$fe"
    fi
    root="$dir/comfyui_frontend_package/static"
  fi
  docs=0
  [ "$fe" = "${FRONTENDS%% *}" ] && docs=1  # the first frontend's screenshots go to docs/img/
  echo "== frontend $fe${root:+ (--front-end-root $root)}"
  start=$(date +%s)
  WANMETER_COMFYUI="$COMFY" WANMETER_COMFY_PYTHON="$PY" HF_HUB_OFFLINE=1 WANMETER_FRONTEND="$fe" \
    WANMETER_FRONT_END_ROOT="$root" WANMETER_DOCS_IMG="${WANMETER_DOCS_IMG:-$docs}" \
    "$PY" -m pytest -q -p no:randomly tests/e2e "$@" || status=1
  echo "e2e suite, frontend $fe: $(( $(date +%s) - start )) s; screenshots and the server log in tests/e2e/artifacts/$fe/"
done
exit $status
