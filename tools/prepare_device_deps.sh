#!/usr/bin/env bash
# Run on the development machine (Debian 12): puts what the GPU machine (Ubuntu 24.04) lacks
# into the ignored folder .deps/prefix, which tools/device_round.sh passes as MOEX_EXTRA_PREFIX:
#   include/pcre2.h, lib/libpcre2-8.a          (the GPU machine has only the PCRE2 runtime .so.0)
#   include/sqlite3.h, lib/libsqlite3.a        (no sqlite headers there)
#   include/utf8proc.h, lib/libutf8proc.a      (tokenizer normalizers; no utf8proc headers there)
#   include/httplib.h, lib/libcpp-httplib.so*  (Debian builds cpp-httplib as a library; the .so
#                                               needs libssl3, zlib and libbrotli1 at run time)
# Idempotent; needs apt-get (downloads .deb files only, installs nothing).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
deps="$root/.deps"
prefix="$deps/prefix"
work="$deps/debs"
mkdir -p "$work" "$prefix/include" "$prefix/lib"
cd "$work"
packages=(libpcre2-dev libsqlite3-dev libutf8proc-dev libcpp-httplib-dev libcpp-httplib0.11)
for p in "${packages[@]}"; do
  if ! ls "${p}"_*.deb >/dev/null 2>&1; then
    apt-get download "$p" >/dev/null 2>&1 || { echo "prepare_device_deps: apt-get download $p failed" >&2; exit 1; }
  fi
done
rm -rf "$work/root"
for deb in ./*.deb; do dpkg -x "$deb" "$work/root"; done
lib="$work/root/usr/lib/x86_64-linux-gnu"
inc="$work/root/usr/include"
cp -f "$inc/pcre2.h" "$inc/sqlite3.h" "$inc/sqlite3ext.h" "$inc/utf8proc.h" "$inc/httplib.h" "$prefix/include/"
cp -f "$lib/libpcre2-8.a" "$lib/libsqlite3.a" "$lib/libutf8proc.a" "$prefix/lib/"
cp -fP "$lib"/libcpp-httplib.so* "$prefix/lib/"
echo "prepare_device_deps: $(cd "$prefix" && find . -type f -o -type l | sort | tr '\n' ' ')"
