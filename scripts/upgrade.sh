#!/usr/bin/env bash
# Zero-downtime upgrade of a running claude-relay: Pingora's listening-socket hand-over.
#
#   scripts/upgrade.sh [--pid OLD_PID] [--bin PATH] [--] RELAY_ARGS...
#   e.g. scripts/upgrade.sh -- --config /etc/claude-relay/relay.yaml
#
# 1. Starts `PATH RELAY_ARGS --upgrade` in the background (PATH: --bin, default the claude-relay
#    on $PATH). It waits on `upgrade_sock` (default <data_dir>/upgrade.sock) for the sockets.
# 2. Once that socket exists, sends SIGQUIT to the old process (--pid, default: the pid in
#    <data_dir>/claude-relay.pid). It sends its listening sockets, keeps accepting for 5 s, then
#    finishes its in-flight requests (up to shutdown_grace) and exits by itself.
# 3. Waits until the new process serves (it writes its pid into the pid file) and exits 0; exits 1
#    if the new process died (before step 2 the old one is untouched).
#
# The new process's output goes where this script's goes (under systemd: the journal). Used by
# systemd/claude-relay.service as ExecReload.
set -euo pipefail

old_pid=""
bin="claude-relay"
while [ $# -gt 0 ]; do
  case "$1" in
    --pid) old_pid="$2"; shift 2 ;;
    --bin) bin="$2"; shift 2 ;;
    --) shift; break ;;
    *) break ;;
  esac
done
args=("$@")

say() { echo "upgrade: $*" >&2; }

paths="$("$bin" "${args[@]}" paths)"
sock="$(sed -n 's/^upgrade_sock=//p' <<<"$paths")"
pid_file="$(sed -n 's/^pid_file=//p' <<<"$paths")"
if [ -z "$old_pid" ]; then
  old_pid="$(cat "$pid_file" 2>/dev/null || true)"
fi
case "$old_pid" in
  '' | *[!0-9]*) say "no running claude-relay (give --pid, or check $pid_file)"; exit 1 ;;
esac
if ! kill -0 "$old_pid" 2>/dev/null; then
  say "process $old_pid is not running"; exit 1
fi

# A stale socket file would make step 2 fire before the new process listens.
rm -f -- "$sock"
if command -v setsid >/dev/null; then
  setsid "$bin" "${args[@]}" --upgrade &
else
  "$bin" "${args[@]}" --upgrade &
fi
new_pid=$!
say "started $new_pid; waiting for it to listen on $sock"

alive() { kill -0 "$new_pid" 2>/dev/null; }
wait_for() { # wait_for SECONDS CONDITION...: polls every 50 ms while the new process lives
  local deadline=$((SECONDS + $1)); shift
  until "$@"; do
    alive || { say "the new process $new_pid exited"; return 1; }
    [ "$SECONDS" -lt "$deadline" ] || { say "timed out waiting for: $*"; return 1; }
    sleep 0.05
  done
}
sock_exists() { [ -S "$sock" ]; }
sock_gone() { [ ! -e "$sock" ]; }
serving() { [ "$(cat "$pid_file" 2>/dev/null || true)" = "$new_pid" ]; }

# Pingora's new process waits about 6 s for the old one, so it must not be left waiting long.
if ! wait_for 10 sock_exists; then
  kill -TERM "$new_pid" 2>/dev/null || true
  say "aborted; $old_pid keeps serving"
  exit 1
fi
kill -QUIT "$old_pid"
say "sent SIGQUIT to $old_pid"
# The new process deletes the socket once it holds the listening sockets; then it opens the store
# (the old process releases it) and binds the admin listener, and writes the pid file.
wait_for 15 sock_gone || exit 1
wait_for 70 serving || exit 1
say "done: $new_pid serves; $old_pid finishes its requests and exits"
disown "$new_pid" 2>/dev/null || true
