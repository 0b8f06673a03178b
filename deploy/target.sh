#!/bin/sh
# hearth-deploy-target: everything hearth runs on a deploy target, as root. hearth sends this
# script to targets it logs in to as root; a target whose deploy user is not root installs it
# (hearth deploy target-script prints it) and lets that user run exactly this command through sudo.
#
#   hello                       facts: protocol, systemd, current system, profile, generation, lock
#   missing                     which of the store paths on stdin are not valid here
#   closure PATH                `nix path-info --json --recursive PATH`
#   realise PATH [SUBST [KEYS]] substitute what PATH's closure (on stdin) lacks here, with extra
#                               substituters and keys: prints the paths missing before (after
#                               "missing:") and after (after "still-missing:"), and Nix's last words
#   serve                       `nix-store --serve --write`, which hearth sends paths to
#   begin ID ACTION PATH CONFIRM_S ACTIVATION_S
#                               take the target's deploy lock, record the previous generation and
#                               the record on stdin, set the profile (switch, boot), start the
#                               watchdog (switch, test) and the activation, each a transient unit
#   follow ID OFFSET            the activation's output from OFFSET until it ends
#   result ID                   status=, verdict=, rolledback=
#   confirm ID                  tell the watchdog the deploy stands; it then releases the lock
#   rollback ID REASON          tell the watchdog to roll back (or roll back here, with no watchdog)
#                               and print what the rollback did
#   generations                 the system profile's generations, with the records hearth left
#
# Internal, run in the transient units: activate ID, watchdog ID.
set -u
PROTOCOL=4
umask 022
export PATH=/run/wrappers/bin:/run/current-system/sw/bin:/nix/var/nix/profiles/default/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
PROFILE=/nix/var/nix/profiles/system
STATE=/var/lib/hearth-deploy
RUN=/run/hearth-deploy
SELF=$(readlink -f "$0")

die() {
	echo "hearth-deploy-target: $*" >&2
	exit 1
}

check_id() {
	case $1 in '' | *[!a-z0-9-]*) die "bad deploy id '$1'" ;; esac
	[ ${#1} -le 64 ] || die "deploy id too long"
}

# Store paths are the target's own store's (a NixOS store is always /nix/store).
check_path() {
	case $1 in
	/nix/store/*/* | /nix/store/) die "'$1' is not a store path" ;;
	/nix/store/?*) ;;
	*) die "'$1' is not a store path" ;;
	esac
	case ${1#/nix/store/} in *[!A-Za-z0-9+._?=-]*) die "'$1' is not a store path" ;; esac
}

check_seconds() {
	case $1 in '' | *[!0-9]*) die "bad number of seconds '$1'" ;; esac
}

generation() {
	link=$(readlink "$PROFILE" 2>/dev/null) || return 0
	n=${link#system-}
	n=${n%-link}
	case $n in '' | *[!0-9]*) ;; *) echo "$n" ;; esac
}

systemd() { [ -d /run/systemd/system ]; }

unit_active() {
	if systemd; then
		systemctl is-active --quiet "$1.service"
	else
		[ -f "$RUN/pids/$1" ] && kill -0 "$(cat "$RUN/pids/$1")" 2>/dev/null
	fi
}

# start_unit NAME ARGS... runs this script with ARGS detached from the caller's session: a
# transient systemd unit, which outlives the SSH connection, logind sessions and a network restart.
start_unit() {
	name=$1
	shift
	if systemd; then
		systemd-run --quiet --collect --no-ask-password --service-type=exec --unit="$name" \
			--setenv=NIXOS_INSTALL_BOOTLOADER=0 ${LOCALE_ARCHIVE:+--setenv=LOCALE_ARCHIVE=$LOCALE_ARCHIVE} \
			-- "$SELF" "$@"
	else
		mkdir -p "$RUN/pids"
		NIXOS_INSTALL_BOOTLOADER=0 setsid "$SELF" "$@" </dev/null >/dev/null 2>&1 &
		echo $! >"$RUN/pids/$name"
	fi
}

stop_unit() {
	if systemd; then
		systemctl stop "$1.service" 2>/dev/null
	elif [ -f "$RUN/pids/$1" ]; then
		kill "$(cat "$RUN/pids/$1")" 2>/dev/null
	fi
	return 0
}

# The lock is a symlink naming the deploy that holds it and the begin that took it,
# "ID:PID:START" (START tells a PID apart from a later process that reuses it): created atomically
# with its content. It is live while that begin runs or one of the deploy's units does; otherwise
# its deploy is gone (a crash before the units started) and the lock is stale. Taking and
# releasing it happen under a flock, so that two runners never both clear a stale lock.
started_at() { cut -d' ' -f22 "/proc/$1/stat" 2>/dev/null; }

lock_owner() {
	held=$(readlink "$RUN/lock" 2>/dev/null) || return 1
	owner=${held%%:*}
	rest=${held#*:}
	pid=${rest%%:*}
	if { [ -n "$pid" ] && [ "$(started_at "$pid")" = "${rest#*:}" ]; } ||
		unit_active "hearth-deploy-$owner" || unit_active "hearth-deploy-watch-$owner" || unit_active "hearth-deploy-rollback-$owner"; then
		echo "$owner"
		return 0
	fi
	return 1
}

guarded() {
	mkdir -p "$RUN"
	(
		flock 9 || exit 1
		"$@"
	) 9>"$RUN/lock.guard"
}

take_lock() { guarded take_lock_guarded "$1"; }

take_lock_guarded() {
	if ln -s "$1:$$:$(started_at $$)" "$RUN/lock" 2>/dev/null; then
		return 0
	fi
	if owner=$(lock_owner); then
		echo "busy=$owner"
		return 1
	fi
	rm -f "$RUN/lock"
	ln -s "$1:$$:$(started_at $$)" "$RUN/lock"
}

release_lock() { guarded release_lock_guarded "$1"; }

release_lock_guarded() {
	case $(readlink "$RUN/lock" 2>/dev/null) in "$1":*) rm -f "$RUN/lock" ;; esac
	return 0
}

# The verdict on a deploy is a symlink too: the first of confirm, rollback and the watchdog's
# deadline to make it decides, and the others read what it says.
decide() {
	ln -s "$2" "$RUN/runs/$1/verdict" 2>/dev/null
}

verdict() { readlink "$RUN/runs/$1/verdict" 2>/dev/null; }

put() {
	printf '%s\n' "$2" >"$1.tmp" && mv "$1.tmp" "$1"
}

# prune_runs keeps the records of the last 20 deploys in /run (tmpfs, emptied at boot anyway), and
# this script's versions of the last 30 days.
prune_runs() {
	[ -d "$RUN/runs" ] && ls -1t "$RUN/runs" | tail -n +21 | while read -r old; do rm -rf "${RUN:?}/runs/$old"; done
	[ -d "$STATE/bin" ] && find "$STATE/bin" -name 'hearth-deploy-target-*' -mtime +30 ! -samefile "$SELF" -delete 2>/dev/null
	return 0
}

cmd_hello() {
	# In use: prune_runs keeps scripts touched within 30 days.
	touch "$SELF" 2>/dev/null
	echo "protocol=$PROTOCOL"
	if systemd; then echo "systemd=1"; else echo "systemd=0"; fi
	echo "current=$(readlink -e /run/current-system 2>/dev/null)"
	echo "profile=$(readlink -e "$PROFILE" 2>/dev/null)"
	echo "generation=$(generation)"
	echo "lock=$(lock_owner)"
}

# The highest generation of the system profile, made by whoever.
last_generation() {
	for link in "$PROFILE"-*-link; do
		[ -L "$link" ] || continue
		n=${link#"$PROFILE"-}
		echo "${n%-link}"
	done | sort -n | tail -n 1
}

cmd_missing() {
	xargs -r nix-store --check-validity --print-invalid || die "could not check which paths are valid"
}

cmd_closure() {
	check_path "$1"
	nix --extra-experimental-features nix-command path-info --json --recursive "$1"
}

# One round trip for the whole pull: what is missing, the substitution, what is still missing.
cmd_realise() {
	check_path "$1"
	set -- "$1" "${2:-}" "${3:-}"
	tmp=$(mktemp -d) || die "no temporary directory"
	list=$tmp/list
	cat >"$list"
	if ! missing=$(xargs -r nix-store --check-validity --print-invalid <"$list"); then
		rm -rf "$tmp"
		die "could not check which paths are valid"
	fi
	echo "missing:"
	if [ -n "$missing" ]; then
		printf '%s\n' "$missing"
		ok=0
		if [ -n "$2" ] && [ -n "$3" ]; then
			nix-store --realise "$1" --option extra-substituters "$2" --option extra-trusted-public-keys "$3"
		elif [ -n "$2" ]; then
			nix-store --realise "$1" --option extra-substituters "$2"
		elif [ -n "$3" ]; then
			nix-store --realise "$1" --option extra-trusted-public-keys "$3"
		else
			nix-store --realise "$1"
		fi >/dev/null 2>"$tmp/log" || ok=$?
		echo "still-missing:"
		# A realise that succeeded made the whole closure valid.
		if [ "$ok" != 0 ]; then
			printf '%s\n' "$missing" | xargs -r nix-store --check-validity --print-invalid
			tail -n 5 "$tmp/log" | sed 's/^/nix: /'
		fi
	fi
	rm -rf "$tmp"
}

cmd_serve() {
	exec nix-store --serve --write
}

cmd_begin() {
	[ $# -eq 5 ] || die "usage: begin ID ACTION PATH CONFIRM_S ACTIVATION_S"
	id=$1 action=$2 path=$3
	check_id "$id"
	check_path "$path"
	check_seconds "$4"
	check_seconds "$5"
	case $action in switch | boot | test) ;; *) die "unknown action '$action'" ;; esac
	[ -f "$path/nixos-version" ] && [ -x "$path/bin/switch-to-configuration" ] ||
		die "$path is not a NixOS system: it has no nixos-version or bin/switch-to-configuration"
	take_lock "$id" || exit 75
	prune_runs
	run=$RUN/runs/$id
	mkdir -p "$run"
	# Which connection began the deploy, and which confirms it: two different ones.
	put "$run/begin-connection" "${SSH_CONNECTION:-}"
	cat >"$run/record.json"
	put "$run/action" "$action"
	put "$run/path" "$path"
	put "$run/confirm" "$4"
	put "$run/activation-timeout" "$5"
	put "$run/prev-system" "$(readlink -e /run/current-system 2>/dev/null)"
	put "$run/prev-profile" "$(readlink -e "$PROFILE" 2>/dev/null)"
	put "$run/prev-generation" "$(generation)"
	: >"$run/log"
	if [ "$action" != test ]; then
		last=$(last_generation)
		if ! nix-env --profile "$PROFILE" --set "$path"; then
			release_lock "$id"
			die "could not set the system profile to $path"
		fi
		gen=$(generation)
		put "$run/generation" "$gen"
		# nix-env reuses the newest generation when it already is the path: then this deploy made
		# none, and a rollback must not delete it.
		if [ "$gen" != "$last" ]; then
			put "$run/made-generation" "$gen"
			mkdir -p "$STATE/generations"
			cp "$run/record.json" "$STATE/generations/$gen.json"
		fi
	fi
	# hearth may have asked for a rollback meanwhile (a cancel, a lost answer): then nothing starts.
	if [ -n "$(verdict "$id")" ]; then
		undo_profile "$id"
		release_lock "$id"
		die "deploy $id was called off before its activation started"
	fi
	if [ "$action" != boot ] && ! start_unit "hearth-deploy-watch-$id" watchdog "$id"; then
		undo_profile "$id"
		release_lock "$id"
		die "could not start the watchdog"
	fi
	if ! start_unit "hearth-deploy-$id" activate "$id"; then
		if [ "$action" = boot ]; then
			undo_profile "$id"
			release_lock "$id"
		else
			# The watchdog sees the verdict at once and undoes the profile.
			decide "$id" "rollback:the activation could not be started"
		fi
		die "could not start the activation"
	fi
	echo "generation=$(cat "$run/generation" 2>/dev/null)"
	echo "previous=$(cat "$run/prev-generation")"
}

cmd_activate() {
	id=$1
	check_id "$id"
	run=$RUN/runs/$id
	action=$(cat "$run/action")
	path=$(cat "$run/path")
	limit=$(cat "$run/activation-timeout")
	# The marker first, then the verdict: a rollback decided before this point finds no activation
	# to undo; one decided after it stops this unit.
	ln -s started "$run/started"
	case $(verdict "$id") in rollback*)
		put "$run/status" "called off"
		exit 0
		;;
	esac
	# The watchdog also stops an activation that outlives the limit; a boot deploy has none.
	timeout --kill-after=10 "$limit" "$path/bin/switch-to-configuration" "$action" >>"$run/log" 2>&1 </dev/null
	status=$?
	put "$run/status" "$status"
	[ "$action" = boot ] || return 0
	# A boot deploy has no watchdog: nothing was activated, so nothing waits for a confirmation. A
	# failed one is undone here, whether or not hearth is still there to ask.
	if [ "$status" = 0 ] && decide "$id" confirmed; then
		release_lock "$id"
		return 0
	fi
	decide "$id" "rollback:switch-to-configuration boot exited $status"
	roll_back "$id" self
	release_lock "$id"
}

cmd_watchdog() {
	id=$1
	check_id "$id"
	run=$RUN/runs/$id
	confirm=$(cat "$run/confirm")
	limit=$(cat "$run/activation-timeout")
	# Polling, five times a second: inotify tools are not on every target.
	ticks=0
	while [ ! -e "$run/status" ] && [ -z "$(verdict "$id")" ]; do
		if [ $ticks -ge $((limit * 5)) ]; then
			decide "$id" "rollback:the activation did not end within ${limit}s"
			break
		fi
		sleep 0.2
		ticks=$((ticks + 1))
	done
	ticks=0
	while [ -z "$(verdict "$id")" ] && [ $ticks -lt $((confirm * 5)) ]; do
		sleep 0.2
		ticks=$((ticks + 1))
	done
	decide "$id" "rollback:no confirmation came within ${confirm}s"
	case $(verdict "$id") in
	rollback*) roll_back "$id" ;;
	esac
	release_lock "$id"
}

undo_profile() {
	run=$RUN/runs/$1
	gen=$(cat "$run/made-generation" 2>/dev/null)
	prev=$(cat "$run/prev-generation" 2>/dev/null)
	if [ -z "$gen" ]; then
		# This deploy made no generation; the profile may still have been moved to an older one.
		[ -n "$prev" ] && [ "$(generation)" != "$prev" ] && nix-env --profile "$PROFILE" --switch-generation "$prev"
		return 0
	fi
	if [ -n "$prev" ]; then
		nix-env --profile "$PROFILE" --switch-generation "$prev" &&
			nix-env --profile "$PROFILE" --delete-generations "$gen"
	else
		# The first generation hearth made: there is nothing to go back to but no profile at all.
		rm -f "$PROFILE" "$PROFILE-$gen-link"
	fi
	rm -f "$STATE/generations/$gen.json"
}

# roll_back restores what ran before: the profile's previous generation, and the previous
# system's activation. It runs in the watchdog's unit (or, for boot, in the caller), never in the
# SSH session, since re-activating the old system may restart the network.
roll_back() {
	id=$1
	run=$RUN/runs/$id
	action=$(cat "$run/action")
	{
		# Not when it is the activation's own unit that rolls back (a boot deploy).
		[ "${2:-}" = self ] || stop_unit "hearth-deploy-$id"
		echo "rolling back: $(verdict "$id" | sed 's/^rollback://')"
		undo_profile "$id"
		system=$(cat "$run/prev-system") profile=$(cat "$run/prev-profile")
		code=0
		if [ ! -L "$run/started" ]; then
			echo "the activation never started: the previous system is still the running one"
			action=none
		fi
		case $action in
		none) ;;
		boot) activate_previous "$profile" boot ;;
		test) activate_previous "$system" test ;;
		*)
			if [ "$system" = "$profile" ] || [ -z "$profile" ]; then
				activate_previous "$system" switch
			else
				# The target ran something other than its boot default (a test deploy, a pending
				# boot one): run that again, and leave the boot default as it was.
				activate_previous "$system" test
				first=$code
				activate_previous "$profile" boot
				[ "$first" = 0 ] || code=$first
			fi
			;;
		esac
		echo "rollback finished with exit code $code"
	} >"$run/rollback.log" 2>&1
	put "$run/rolledback" "$code"
}

# activate_previous SYSTEM VERB runs a previous system's switch-to-configuration; code is its exit
# status, or "none" when there is no previous system.
activate_previous() {
	if [ -n "$1" ] && [ -x "$1/bin/switch-to-configuration" ]; then
		echo "activating the previous system $1 ($2)"
		timeout --kill-after=10 "$(cat "$run/activation-timeout")" "$1/bin/switch-to-configuration" "$2" </dev/null
		code=$?
		return $code
	fi
	echo "there is no previous system to activate"
	code=none
	return 1
}

cmd_follow() {
	id=$1
	check_id "$id"
	check_seconds "$2"
	run=$RUN/runs/$id
	[ -d "$run" ] || die "no deploy $id on this target"
	off=$2
	# Every 50 ms for the first two seconds (most activations of a small change end by then), then
	# every 200 ms.
	polls=0
	while :; do
		ended=0
		[ -e "$run/status" ] || [ -n "$(verdict "$id")" ] && ended=1
		size=$(wc -c <"$run/log")
		if [ "$size" -gt "$off" ]; then
			tail -c +$((off + 1)) "$run/log" | head -c $((size - off))
			off=$size
		elif [ $ended = 1 ]; then
			return 0
		elif [ $polls -lt 40 ]; then
			sleep 0.05
			polls=$((polls + 1))
		else
			sleep 0.2
		fi
	done
}

cmd_result() {
	check_id "$1"
	run=$RUN/runs/$1
	[ -d "$run" ] || die "no deploy $1 on this target"
	echo "status=$(cat "$run/status" 2>/dev/null)"
	echo "verdict=$(verdict "$1")"
	echo "rolledback=$(cat "$run/rolledback" 2>/dev/null)"
	echo "generation=$(cat "$run/generation" 2>/dev/null)"
}

cmd_confirm() {
	check_id "$1"
	[ -d "$RUN/runs/$1" ] || die "no deploy $1 on this target"
	if decide "$1" confirmed || [ "$(verdict "$1")" = confirmed ]; then
		put "$RUN/runs/$1/confirm-connection" "${SSH_CONNECTION:-}"
		release_lock "$1"
		echo "verdict=confirmed"
		return 0
	fi
	echo "verdict=$(verdict "$1")"
	exit 1
}

# Exit codes hearth tells apart: no such deploy here, and a deploy that was already confirmed.
NO_DEPLOY=65
CONFIRMED=66

cmd_rollback() {
	id=$1
	check_id "$id"
	run=$RUN/runs/$id
	if [ ! -d "$run" ]; then
		echo "hearth-deploy-target: no deploy $id on this target" >&2
		exit $NO_DEPLOY
	fi
	decide "$id" "rollback:${2:-asked by hearth}" || true
	case $(verdict "$id") in
	rollback*) ;;
	*)
		echo "hearth-deploy-target: deploy $id was already confirmed" >&2
		exit $CONFIRMED
		;;
	esac
	limit=$(cat "$run/activation-timeout")
	# A begin still running sees the verdict before it starts anything; wait for it to end.
	ticks=0
	while held=$(readlink "$RUN/lock" 2>/dev/null) && [ "${held%%:*}" = "$id" ] &&
		rest=${held#*:} && [ "$(started_at "${rest%%:*}")" = "${rest#*:}" ] && [ $ticks -lt 300 ]; do
		sleep 0.2
		ticks=$((ticks + 1))
	done
	# Then whoever is running for the deploy rolls it back (the watchdog, a boot deploy's own
	# activation); if nobody is, a unit of its own does, away from this SSH session.
	if [ ! -e "$run/rolledback" ] && ! unit_active "hearth-deploy-watch-$id" && ! unit_active "hearth-deploy-$id"; then
		start_unit "hearth-deploy-rollback-$id" rollback-unit "$id"
	fi
	# As long as two activations may take: the stopped one's and the previous system's.
	ticks=0
	while [ ! -e "$run/rolledback" ] && [ $ticks -lt $(((2 * limit + 30) * 5)) ]; do
		sleep 0.2
		ticks=$((ticks + 1))
	done
	cat "$run/rollback.log" 2>/dev/null
	echo "rolledback=$(cat "$run/rolledback" 2>/dev/null)"
}

cmd_rollback_unit() {
	check_id "$1"
	roll_back "$1"
	release_lock "$1"
}

cmd_generations() {
	current=$(generation)
	for link in "$PROFILE"-*-link; do
		[ -L "$link" ] || continue
		n=${link#"$PROFILE"-}
		n=${n%-link}
		mark=""
		[ "$n" = "$current" ] && mark="current"
		record=""
		[ -f "$STATE/generations/$n.json" ] && record=$(tr -d '\n' <"$STATE/generations/$n.json")
		printf '%s\t%s\t%s\t%s\t%s\n' "$n" "$(readlink -e "$link")" "$(stat -c %Y "$link")" "$mark" "$record"
	done | sort -n
}

[ $# -ge 1 ] || die "usage: hearth-deploy-target COMMAND ..."
[ "$(id -u)" = 0 ] || die "must run as root (hearth runs it through sudo for a deploy user that is not root)"
cmd=$1
shift
case $cmd in
hello) cmd_hello ;;
missing) cmd_missing ;;
closure) cmd_closure "$@" ;;
realise) cmd_realise "$@" ;;
serve) cmd_serve ;;
begin) cmd_begin "$@" ;;
activate) cmd_activate "$@" ;;
watchdog) cmd_watchdog "$@" ;;
rollback-unit) cmd_rollback_unit "$@" ;;
follow) cmd_follow "$@" ;;
result) cmd_result "$@" ;;
confirm) cmd_confirm "$@" ;;
rollback) cmd_rollback "$@" ;;
generations) cmd_generations ;;
*) die "unknown command '$cmd'" ;;
esac
