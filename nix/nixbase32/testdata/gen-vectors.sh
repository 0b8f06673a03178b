#!/bin/sh
# Regenerates nix-hash-vectors.txt ("type hex nix32" per line) from random inputs and a few
# edge cases, using Nix itself as the reference: sh gen-vectors.sh > nix-hash-vectors.txt
set -eu
rnd() { head -c "$1" /dev/urandom | od -An -tx1 | tr -d ' \n'; }
rep() { i=0; while [ $i -lt "$2" ]; do printf %s "$1"; i=$((i + 1)); done; }
for t in md5:16 sha1:20 sha256:32 sha512:64; do
	ty=${t%%:*} n=${t##*:}
	for _ in 1 2 3 4 5 6; do
		h=$(rnd "$n")
		echo "$ty $h $(nix-hash --type "$ty" --to-base32 "$h")"
	done
done
for t in sha256:32 sha1:20; do
	ty=${t%%:*} n=${t##*:}
	for h in "$(rep 00 "$n")" "$(rep ff "$n")" "01$(rep 00 $((n - 1)))" "$(rep 00 $((n - 1)))80"; do
		echo "$ty $h $(nix-hash --type "$ty" --to-base32 "$h")"
	done
done
