#!/usr/bin/env bash
# Install time and size of `pip install .` (inference) and `pip install ".[train]"` (data
# preparation and training), each into a fresh virtual environment, from a copy of this
# repository's tracked files (a user's non-editable install).
#
#   bash benchmarks/install_size.sh [WORK_DIR]     # prints one line per install
#
# Times depend on pip's download cache and the network: run it twice to see the cached figure.
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
work="${1:-$(mktemp -d)}"
mkdir -p "$work/src"
git -C "$repo" ls-files -z | (cd "$repo" && xargs -0 tar cf -) | tar xf - -C "$work/src"
for kind in inference train; do
  venv="$work/venv-$kind"
  rm -rf "$venv" && python3 -m venv "$venv"
  spec="$work/src"; [ "$kind" = train ] && spec="$work/src[train]"
  start=$(date +%s.%N)
  "$venv/bin/pip" install -q "$spec" > "$work/pip-$kind.log" 2>&1
  seconds=$(echo "$(date +%s.%N) - $start" | bc)
  megabytes=$(du -sm "$venv" | cut -f1)
  tensorflow=$("$venv/bin/python" -c "import importlib.util as u; print(u.find_spec('tensorflow') is not None)")
  printf '%-9s %6.0f s  %5s MB  tensorflow installed: %s\n' "$kind" "$seconds" "$megabytes" "$tensorflow"
done
