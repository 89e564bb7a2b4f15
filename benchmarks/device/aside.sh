#!/usr/bin/env bash
# The device tool copies the working tree (tracked files included) with the carried paths, 64 MiB in all. The model's
# second part, the wheels and the data take about 57 MiB, and results/ alone has grown past 20 MiB, so the second
# setup command does not fit (as on 2026-11-30, sixth session). This moves what the GPU commands do not read --
# docs/, tests/ and results/ except the paths named -- out of the tree, and puts it back afterwards.
#   usage: bash benchmarks/device/aside.sh out [KEEP...]   e.g. `out results/reference/sst2` to continue that session
#          bash benchmarks/device/aside.sh back
#   ASIDE: where the files wait (default /tmp/peftbench-aside). Should `back` be lost, `git checkout -- docs tests
#   results` restores the committed files (uncommitted changes under them would be lost: commit first).
set -eu
root=${PEFTBENCH_ROOT:-$(cd "$(dirname "$0")/../.." && pwd)}
aside=${ASIDE:-/tmp/peftbench-aside}
cmd=${1:-}; shift || true
size() { (cd "$root" && { git ls-files -z; git ls-files -z --others --exclude-standard; } \
          | xargs -0 -r du -cb 2>/dev/null | awk 'END { printf "%.1f MiB\n", $1 / 1048576 }'); }
case $cmd in
  out)
    [ -e "$aside" ] && { echo "aside.sh: $aside exists already: run 'back' first" >&2; exit 2; }
    for keep in "$@"; do
      [ -e "$root/$keep" ] || { echo "aside.sh: nothing to keep at $keep" >&2; exit 2; }
    done
    mkdir -p "$aside"
    move() {  # REL: move REL out, or, when it holds a kept path, each of its entries
      local rel=$1 keep under=
      for keep in "${keeps[@]}"; do
        [ "$keep" = "$rel" ] && return 0
        case $keep/ in "$rel"/*) under=1 ;; esac
      done
      if [ -n "$under" ] && [ -d "$root/$rel" ]; then
        local e
        for e in "$root/$rel"/* "$root/$rel"/.[!.]*; do
          if [ -e "$e" ]; then move "${e#"$root"/}"; fi
        done
      else
        mkdir -p "$aside/$(dirname "$rel")"
        mv "$root/$rel" "$aside/$rel"
      fi
      return 0
    }
    keeps=(); for keep in "$@"; do keeps+=("${keep%/}"); done
    for top in docs tests results; do
      if [ -e "$root/$top" ]; then move "$top"; fi
    done
    echo "aside.sh: moved to $aside; the tree is now $(size)" ;;
  back)
    [ -d "$aside" ] || { echo "aside.sh: nothing at $aside" >&2; exit 2; }
    (cd "$aside" && find . -mindepth 1 \( -type f -o -type l \) -print0) | while IFS= read -r -d '' f; do
      f=${f#./}
      [ -e "$root/$f" ] && { echo "aside.sh: $f is in the tree again; left in $aside" >&2; continue; }
      mkdir -p "$root/$(dirname "$f")" && mv "$aside/$f" "$root/$f"
    done
    if [ -z "$(find "$aside" -type f | head -1)" ]; then rm -rf "$aside"; echo "aside.sh: restored; the tree is $(size)"
    else echo "aside.sh: some files stay in $aside (above)" >&2; exit 1; fi ;;
  *) echo "usage: bash benchmarks/device/aside.sh out [KEEP...] | back" >&2; exit 2 ;;
esac
