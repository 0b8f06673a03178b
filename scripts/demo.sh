#!/usr/bin/env bash
# Sets up this machine as needed, then runs a demo job end to end through `hearth exec`: a private
# containerd and nix-daemon, a job environment made from the store, and a job that builds a
# derivation through the daemon — twice, to show that the second build is free — and pushes what it
# built to a file binary cache, reported in the job log; then a job on a protected ref that builds a
# (stand-in) NixOS system, which hearth deploys to a server booted for the demo (a Debian host with
# systemd and its own Nix store, under systemd-nspawn; its base system is built once, in a minute).
set -euo pipefail
cd "$(dirname "$0")/.."
HEARTH_NEED_TARGETS=1 source scripts/setup.sh
exec go run ./internal/tools/demo "$@"
