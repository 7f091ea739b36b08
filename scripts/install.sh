#!/usr/bin/env bash
# Installs claude-relay as a systemd service, upgrades it, or removes it. Run as root.
#
#   sudo scripts/install.sh                 # build (with the web panel), install, start
#   sudo scripts/install.sh --bin PATH      # install a binary built elsewhere
#   sudo scripts/install.sh                 # again, with a newer build: zero-downtime upgrade
#   sudo scripts/install.sh --uninstall     # stop and remove; keeps the config and the data
#   sudo scripts/install.sh --uninstall --purge   # ...and the config, the data, the logs, the user
#
# What it installs:
#   /usr/local/bin/claude-relay                  the binary (replaced by rename: a running
#                                                process keeps its own)
#   /usr/local/lib/claude-relay/upgrade.sh       the hand-over the unit's ExecReload runs
#   claude-relay system user and group           no login shell, home /var/lib/claude-relay
#   /etc/claude-relay/relay.yaml                 a starter config, only when there is none
#                                                (root:claude-relay 0640; never overwritten)
#   /etc/claude-relay/relay.example.yaml         every option, documented (refreshed each time)
#   /etc/claude-relay/env                        environment for ${VAR} in relay.yaml (0600,
#                                                only when there is none)
#   /var/lib/claude-relay, /var/log/claude-relay the data (store, generated secrets) and logs
#   /etc/systemd/system/claude-relay.service     the unit (systemd/claude-relay.service)
#
# Then it starts the service and waits until it answers on /health. Run again, it installs the
# new binary beside the running one and reloads the service: the new process takes the listening
# sockets over (scripts/upgrade.sh), so no connection is refused and no request is cut. When the
# unit's user changed (a unit from before the system user), it restarts instead, and says so.
#
# Options (defaults in brackets; they exist so that a test can install into a scratch tree):
#   --bin PATH          the binary to install [build it: scripts/run.sh's build, release, panel]
#   --user NAME         the system user and group [claude-relay]
#   --name NAME         the unit's name [claude-relay]
#   --prefix DIR        binary in DIR/bin, upgrade script in DIR/lib/claude-relay [/usr/local]
#   --config-dir DIR    [/etc/claude-relay]
#   --data-dir DIR      [/var/lib/claude-relay]
#   --log-dir DIR       [/var/log/claude-relay]
#   --unit-dir DIR      [/etc/systemd/system]
#   --no-start          install, do not start or reload
#   --uninstall, --purge
# SYSTEMCTL names the systemctl to run [systemctl]. Without a running systemd (no
# /run/systemd/system and no SYSTEMCTL), everything is installed and the command that starts the
# relay by hand is printed.
set -euo pipefail
cd "$(dirname "$0")/.."

bin=""
user="claude-relay"
name="claude-relay"
prefix="/usr/local"
config_dir="/etc/claude-relay"
data_dir="/var/lib/claude-relay"
log_dir="/var/log/claude-relay"
unit_dir="/etc/systemd/system"
start=1
uninstall=0
purge=0
while [ $# -gt 0 ]; do
  case "$1" in
    --bin) bin="$2"; shift 2 ;;
    --user) user="$2"; shift 2 ;;
    --name) name="$2"; shift 2 ;;
    --prefix) prefix="$2"; shift 2 ;;
    --config-dir) config_dir="$2"; shift 2 ;;
    --data-dir) data_dir="$2"; shift 2 ;;
    --log-dir) log_dir="$2"; shift 2 ;;
    --unit-dir) unit_dir="$2"; shift 2 ;;
    --no-start) start=0; shift ;;
    --uninstall) uninstall=1; shift ;;
    --purge) purge=1; shift ;;
    -h | --help) sed -n '2,42p' "$0"; exit 0 ;;
    *) echo "install: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
done

say() { echo "install: $*" >&2; }
die() { say "$*"; exit 1; }

[ "$(id -u)" -eq 0 ] || die "run as root (sudo $0 $*)"
case "$user$name" in *[!A-Za-z0-9_.-]*) die "--user and --name take letters, digits, _ . - only" ;; esac
for d in "$prefix" "$config_dir" "$data_dir" "$log_dir" "$unit_dir"; do
  case "$d" in /*) ;; *) die "$d: give absolute paths" ;; esac
  case "$d" in *'|'* | *' '*) die "$d: no spaces or | in paths" ;; esac
done

systemctl_cmd="${SYSTEMCTL:-systemctl}"
have_systemd() { [ -n "${SYSTEMCTL:-}" ] || [ -d /run/systemd/system ]; }
sysctl() { "$systemctl_cmd" "$@"; }

unit="$unit_dir/$name.service"
installed_bin="$prefix/bin/claude-relay"
upgrade_script="$prefix/lib/claude-relay/upgrade.sh"
config="$config_dir/relay.yaml"

if [ "$uninstall" = 1 ]; then
  if have_systemd && [ -f "$unit" ]; then
    sysctl disable --now "$name" || say "could not stop $name (see: systemctl status $name)"
  fi
  rm -f -- "$unit" "$installed_bin" "$upgrade_script"
  rmdir -- "$prefix/lib/claude-relay" 2>/dev/null || true
  have_systemd && sysctl daemon-reload || true
  if [ "$purge" = 1 ]; then
    rm -rf -- "$config_dir" "$data_dir" "$log_dir"
    if getent passwd "$user" >/dev/null; then userdel "$user" || say "could not delete user $user"; fi
    if getent group "$user" >/dev/null; then groupdel "$user" 2>/dev/null || true; fi
    say "removed $name, its config, data, logs and user"
  else
    say "removed $name; kept $config_dir, $data_dir, $log_dir and user $user (--purge removes them)"
  fi
  exit 0
fi

# The binary: given, or built like scripts/run.sh builds it.
if [ -z "$bin" ]; then
  command -v cargo >/dev/null ||
    die "no cargo for root: build as yourself first (RELAY_BUILD_ONLY=1 ./scripts/run.sh), then: sudo $0 --bin target/release/claude-relay"
  say "building the relay (release, with the web panel)"
  RELAY_BUILD_ONLY=1 ./scripts/run.sh
  bin="${CARGO_TARGET_DIR:-target}/release/claude-relay"
fi
[ -x "$bin" ] || die "$bin is not an executable"
version="$("$bin" --version)" || die "$bin does not run"
say "installing $version"

# The system user.
if ! getent passwd "$user" >/dev/null; then
  nologin="$(command -v nologin || echo /usr/sbin/nologin)"
  useradd --system --user-group --home-dir "$data_dir" --no-create-home --shell "$nologin" "$user"
  say "created system user $user"
fi

# Directories: config readable by the service, data and logs its own.
install -d -m 0755 "$prefix/bin" "$prefix/lib/claude-relay" "$unit_dir"
install -d -m 0750 -o root -g "$user" "$config_dir"
install -d -m 0750 -o "$user" -g "$user" "$data_dir" "$log_dir"

# The binary, replaced by rename: the running process keeps the file it started from.
install -m 0755 "$bin" "$installed_bin.new"
mv -f -- "$installed_bin.new" "$installed_bin"
install -m 0755 scripts/upgrade.sh "$upgrade_script"

install -m 0640 -o root -g "$user" conf/relay.yaml "$config_dir/relay.example.yaml"
if [ ! -e "$config" ]; then
  cat >"$config.new" <<EOF
# claude-relay. Every option, with its default: $config_dir/relay.example.yaml.
# \${NAME} values come from the environment; the service reads $config_dir/env.
listen: 0.0.0.0:3000
admin: { listen: 127.0.0.1:3001, username: admin }   # the first start writes a password file
data_dir: $data_dir
# log: { format: json, file: $log_dir/relay.log, rotate: daily, keep: 14 }
EOF
  chown "root:$user" "$config.new"
  chmod 0640 "$config.new"
  mv -f -- "$config.new" "$config"
  say "wrote a starter $config"
fi
if [ ! -e "$config_dir/env" ]; then
  printf '%s\n' "# Environment of the $name service, for \${NAME} in relay.yaml, e.g." \
    "# RELAY_ADMIN_PASSWORD=..." "# ANTHROPIC_API_KEY=sk-ant-..." >"$config_dir/env"
  chmod 0600 "$config_dir/env"
fi
# A config the binary refuses stops here, before the service is touched.
(
  set -a
  # shellcheck disable=SC1090,SC1091
  . "$config_dir/env"
  set +a
  RELAY_DATA_DIR="$data_dir" runuser -u "$user" -- "$installed_bin" --config "$config" check-config >/dev/null
) || die "$config is not valid (above); the running service, if any, is untouched"

# The unit, with this installation's user and paths.
new_unit="$(sed \
  -e "s|^User=claude-relay|User=$user|" \
  -e "s|^Group=claude-relay|Group=$user|" \
  -e "s|/usr/local/bin/claude-relay|$installed_bin|g" \
  -e "s|/usr/local/lib/claude-relay/upgrade.sh|$upgrade_script|g" \
  -e "s|/etc/claude-relay|$config_dir|g" \
  -e "s|/var/lib/claude-relay|$data_dir|g" \
  systemd/claude-relay.service)"
if [ "$data_dir" != /var/lib/claude-relay ]; then
  new_unit="$(sed -e "s|^StateDirectory=.*|ReadWritePaths=$data_dir|" -e '/^StateDirectoryMode=/d' <<<"$new_unit")"
fi
if [ "$log_dir" != /var/log/claude-relay ]; then
  new_unit="$(sed -e "s|^LogsDirectory=.*|ReadWritePaths=$log_dir|" -e '/^LogsDirectoryMode=/d' <<<"$new_unit")"
fi
old_unit="$(cat "$unit" 2>/dev/null || true)"
unit_changed=0
[ "$old_unit" = "$new_unit" ] || unit_changed=1
user_changed=0
if [ -n "$old_unit" ] && [ "$(grep -E '^(User|DynamicUser)=' <<<"$old_unit" || true)" != "$(grep -E '^(User|DynamicUser)=' <<<"$new_unit" || true)" ]; then
  user_changed=1
fi
if [ "$unit_changed" = 1 ]; then
  printf '%s\n' "$new_unit" >"$unit.new"
  chmod 0644 "$unit.new"
  mv -f -- "$unit.new" "$unit"
fi

if [ "$start" = 0 ]; then
  say "installed; not started (--no-start)"
  exit 0
fi
if ! have_systemd; then
  say "installed; systemd is not running here, so start the relay yourself:"
  say "  runuser -u $user -- env RELAY_DATA_DIR=$data_dir $installed_bin --config $config"
  exit 0
fi

[ "$unit_changed" = 1 ] && sysctl daemon-reload
if sysctl is-active --quiet "$name"; then
  if [ "$user_changed" = 1 ]; then
    say "the unit's user changed: restarting $name (in-flight requests finish first)"
    sysctl restart "$name"
  else
    say "upgrading the running $name without downtime (systemctl reload)"
    sysctl reload "$name"
  fi
else
  sysctl enable --now "$name"
fi

# Wait until it answers.
paths="$(RELAY_DATA_DIR="$data_dir" runuser -u "$user" -- "$installed_bin" --config "$config" paths 2>/dev/null || true)"
listen="$(sed -n 's/^listen=//p' <<<"$paths")"
admin_listen="$(sed -n 's/^admin_listen=//p' <<<"$paths")"
scheme=http
[ "$(sed -n 's/^https=//p' <<<"$paths")" = true ] && scheme=https
local_addr() { sed -e 's/^0\.0\.0\.0:/127.0.0.1:/' -e 's/^\[::\]:/[::1]:/' <<<"$1"; }
health="$scheme://$(local_addr "$listen")/health"
answers() {
  if command -v curl >/dev/null; then
    curl -fsk -o /dev/null --max-time 2 "$health"
  else # no curl: the port accepts a connection
    local a; a="$(local_addr "$listen")"
    (exec 3<>"/dev/tcp/${a%:*}/${a##*:}") 2>/dev/null
  fi
}
for _ in $(seq 1 600); do
  if answers; then
    say "$name serves on $listen (admin API and panel on $admin_listen)"
    if [ -f "$data_dir/admin-password.txt" ]; then
      say "the first admin password is in $data_dir/admin-password.txt: log in, then delete the file"
    fi
    exit 0
  fi
  sleep 0.1
done
die "$name did not answer on $health within 60 s; see: journalctl -u $name"
