#!/bin/sh
# Installs the AgentChat broker on a fresh Debian 12 server: runtime packages, users, directories, the broker
# binary, the systemd units, Redis's configuration, a generated /etc/agentchat/agentchat.env; then enables and
# starts agentchat-redis and agentchat-broker. Idempotent: a second run changes nothing and keeps the generated
# secrets. See deploy/README.md.
#
#   sudo deploy/install.sh --binary ./agentchat-broker --domain chat.example.org
#
# Every line it prints is one step: "+ " an action it takes (or, with --dry-run, would take), "= " a step already
# in the wanted state, "- " a step skipped (--skip-system).
set -eu

usage() {
    cat <<'EOF'
usage: install.sh --binary PATH --domain NAME [--root DIR] [--dry-run] [--skip-system] [--port-443]

  --binary PATH   the agentchat-broker executable to install (release build; see deploy/README.md)
  --domain NAME   the public DNS name; the broker's issuer becomes https://NAME (used only when
                  /etc/agentchat/agentchat.env is first written)
  --root DIR      install into DIR instead of / (for tests and image builds)
  --dry-run       print every action, change nothing
  --skip-system   skip apt-get, user creation, chown and systemctl (with --root, for tests)
  --port-443      also install the drop-in that lets the broker bind port 443 (CAP_NET_BIND_SERVICE)
EOF
}

fail() { echo "install.sh: $*" >&2; exit 2; }

BINARY=""
DOMAIN=""
ROOT=""
DRY_RUN=0
SKIP_SYSTEM=0
PORT_443=0
while [ $# -gt 0 ]; do
    case "$1" in
        --binary) [ $# -ge 2 ] || fail "--binary needs a path"; BINARY=$2; shift 2 ;;
        --domain) [ $# -ge 2 ] || fail "--domain needs a name"; DOMAIN=$2; shift 2 ;;
        --root) [ $# -ge 2 ] || fail "--root needs a directory"; ROOT=$2; shift 2 ;;
        --dry-run) DRY_RUN=1; shift ;;
        --skip-system) SKIP_SYSTEM=1; shift ;;
        --port-443) PORT_443=1; shift ;;
        -h|--help) usage; exit 0 ;;
        *) usage >&2; fail "unknown argument: $1" ;;
    esac
done

HERE=$(cd "$(dirname "$0")" && pwd)
[ -n "$BINARY" ] || { usage >&2; fail "--binary is required"; }
if [ ! -f "$BINARY" ] || [ ! -x "$BINARY" ]; then fail "--binary $BINARY is not an executable file"; fi
if [ -n "$DOMAIN" ]; then
    printf '%s\n' "$DOMAIN" | grep -Eq '^[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?(:[0-9]+)?$' \
        || fail "--domain $DOMAIN is not a DNS name (like chat.example.org)"
fi
if [ -n "$ROOT" ]; then
    [ -d "$ROOT" ] || fail "--root $ROOT is not a directory"
    ROOT=$(cd "$ROOT" && pwd)
    [ "$ROOT" != / ] || ROOT=""
fi
if [ "$DRY_RUN" -eq 0 ] && [ "$SKIP_SYSTEM" -eq 0 ] && [ "$(id -u)" -ne 0 ]; then
    fail "run as root (or with --dry-run, or --skip-system with --root)"
fi
for f in agentchat.env.in redis/agentchat-redis.conf redis/redis-users.acl.in systemd/agentchat-broker.service \
    systemd/agentchat-redis.service systemd/agentchat-broker-port-443.conf; do
    [ -f "$HERE/$f" ] || fail "missing $HERE/$f: run install.sh from the deploy/ directory of the source tree"
done

if [ ! -f "$ROOT/etc/agentchat/agentchat.env" ] && [ -z "$DOMAIN" ]; then
    fail "--domain is required to write /etc/agentchat/agentchat.env the first time"
fi

PACKAGES="libwebsockets17 libsodium23 libhiredis0.14 libuv1 redis-server"
ENV_FILE=/etc/agentchat/agentchat.env
ACL_FILE=/etc/agentchat/redis-users.acl
BROKER_PASSWORD_FILE=/etc/agentchat/redis-password
ADMIN_PASSWORD_FILE=/etc/agentchat/redis-admin-password
CHANGED=0

# "+ action" (done unless --dry-run), "= state" (nothing to do), "- action" (skipped: --skip-system).
act() {
    if [ "$DRY_RUN" -eq 1 ]; then echo "+ (dry run) $*"; else echo "+ $*"; fi
}
ok() { echo "= $*"; }
skipped() { echo "- (skipped: --skip-system) $*"; }
# Runs a command unless --dry-run.
run() { [ "$DRY_RUN" -eq 1 ] || "$@"; }

system_step() {
    # system_step DESCRIPTION COMMAND...: a step on the host itself (packages, users, ownership, services).
    description=$1; shift
    if [ "$SKIP_SYSTEM" -eq 1 ]; then skipped "$description"; return 0; fi
    act "$description"
    run "$@"
}

packages() {
    missing=""
    if [ "$SKIP_SYSTEM" -eq 1 ]; then skipped "apt-get install $PACKAGES"; return 0; fi
    for p in $PACKAGES; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
    done
    if [ -z "$missing" ]; then ok "packages installed: $PACKAGES"; return 0; fi
    act "apt-get update && apt-get install --no-install-recommends$missing"
    run apt-get update -qq
    # shellcheck disable=SC2086 # one word per package
    run env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $missing
    CHANGED=1
}

system_user() {
    # system_user NAME GROUP_OPTION: a system account without login or home files.
    name=$1
    if [ "$SKIP_SYSTEM" -eq 1 ]; then skipped "create system user $name"; return 0; fi
    if getent passwd "$name" >/dev/null; then ok "user $name exists"; return 0; fi
    act "useradd --system $name"
    run useradd --system --user-group --home-dir /var/lib/agentchat --no-create-home --shell /usr/sbin/nologin "$name"
    CHANGED=1
}

system_group() {
    if [ "$SKIP_SYSTEM" -eq 1 ]; then skipped "create group $1"; return 0; fi
    if getent group "$1" >/dev/null; then ok "group $1 exists"; return 0; fi
    act "groupadd --system $1"
    run groupadd --system "$1"
    CHANGED=1
}

owner() {
    # owner PATH USER:GROUP
    if [ "$SKIP_SYSTEM" -eq 1 ]; then skipped "chown $2 $1"; return 0; fi
    if [ -e "$ROOT$1" ] && [ "$(stat -c %U:%G "$ROOT$1")" = "$2" ]; then ok "owner of $1 is $2"; return 0; fi
    act "chown $2 $1"
    run chown "$2" "$ROOT$1"
    CHANGED=1
}

mode() {
    # mode PATH MODE (octal, 4 digits)
    if [ -e "$ROOT$1" ] && [ "$(stat -c %04a "$ROOT$1")" = "$2" ]; then ok "mode of $1 is $2"; return 0; fi
    act "chmod $2 $1"
    run chmod "$2" "$ROOT$1"
    CHANGED=1
}

directory() {
    # directory PATH MODE USER:GROUP
    if [ -d "$ROOT$1" ]; then ok "directory $1 exists"; else act "mkdir $1"; run mkdir -p "$ROOT$1"; CHANGED=1; fi
    mode "$1" "$2"
    owner "$1" "$3"
}

file_from() {
    # file_from SOURCE PATH MODE USER:GROUP: PATH gets SOURCE's content (replaced when it differs).
    if [ -f "$ROOT$2" ] && cmp -s "$1" "$ROOT$2"; then
        ok "$2 up to date"
    else
        act "install $2 (from $1)"
        run cp "$1" "$ROOT$2.tmp.$$"
        run mv -f "$ROOT$2.tmp.$$" "$ROOT$2"
        CHANGED=1
    fi
    mode "$2" "$3"
    owner "$2" "$4"
}

tree_from() {
    # tree_from SOURCE_DIR PATH: PATH becomes a copy of SOURCE_DIR (files 0644, directories 0755, owned by root).
    if [ -d "$ROOT$2" ] && diff -r "$1" "$ROOT$2" >/dev/null 2>&1; then
        ok "$2 up to date"
        return 0
    fi
    act "install $2/ (from $1)"
    if [ "$DRY_RUN" -eq 0 ]; then
        rm -rf "$ROOT$2.tmp.$$"
        cp -R "$1" "$ROOT$2.tmp.$$"
        find "$ROOT$2.tmp.$$" -type d -exec chmod 0755 {} + -o -type f -exec chmod 0644 {} +
        rm -rf "$ROOT$2"
        mv "$ROOT$2.tmp.$$" "$ROOT$2"
        if [ "$SKIP_SYSTEM" -eq 0 ]; then chown -R root:root "$ROOT$2"; fi
    fi
    CHANGED=1
}

link() {
    # link PATH TARGET: PATH is a symbolic link to TARGET.
    if [ -L "$ROOT$1" ] && [ "$(readlink "$ROOT$1")" = "$2" ]; then ok "$1 links to $2"; return 0; fi
    act "ln -sfn $2 $1"
    run ln -sfn "$2" "$ROOT$1"
    CHANGED=1
}

random_hex() { od -An -N32 -tx1 /dev/urandom | tr -d ' \n'; }

# A file written once from a template and never rewritten (it holds generated secrets and the operator's edits).
generated_file() {
    # generated_file PATH MODE USER:GROUP DESCRIPTION: the content comes from stdin.
    if [ -f "$ROOT$1" ]; then
        ok "$1 exists (kept: $4)"
        cat >/dev/null
    else
        act "write $1 ($4)"
        if [ "$DRY_RUN" -eq 0 ]; then
            (umask 077 && cat >"$ROOT$1.tmp.$$")
            mv -f "$ROOT$1.tmp.$$" "$ROOT$1"
        else
            cat >/dev/null
        fi
        CHANGED=1
    fi
    mode "$1" "$2"
    owner "$1" "$3"
}

echo "AgentChat install into ${ROOT:-/}$([ "$DRY_RUN" -eq 1 ] && echo ' (dry run: nothing is changed)')"

# 1. Packages: the broker's runtime libraries and Redis.
packages

# 2. Users: agentchat runs the broker; agentchat-redis runs Redis (in group agentchat, to share the socket).
system_user agentchat
system_user agentchat-redis

# 3. Directories.
directory /etc/agentchat 0750 root:agentchat
directory /var/lib/agentchat 0750 root:agentchat
directory /var/lib/agentchat/broker 0750 agentchat:agentchat
directory /var/lib/agentchat/redis 0750 agentchat-redis:agentchat
directory /usr/local/bin 0755 root:root
directory /etc/systemd/system 0755 root:root

# 4. The broker binary, with its resource bundle (the viewer page) beside it where Foundation's Bundle.module looks
# for it, and a link in /usr/local/bin for operators.
directory /usr/local/lib/agentchat 0755 root:root
file_from "$BINARY" /usr/local/lib/agentchat/agentchat-broker 0755 root:root
BUNDLE=$(dirname "$BINARY")/AgentChat_AgentChatBroker.resources
if [ -d "$BUNDLE" ]; then
    tree_from "$BUNDLE" /usr/local/lib/agentchat/AgentChat_AgentChatBroker.resources
else
    echo "install.sh: warning: no $BUNDLE beside the binary: the broker will not serve its viewer page" >&2
fi
link /usr/local/bin/agentchat-broker /usr/local/lib/agentchat/agentchat-broker

# 5. systemd units (and the optional port-443 drop-in).
UNITS_BEFORE=$CHANGED
CHANGED=0
file_from "$HERE/systemd/agentchat-redis.service" /etc/systemd/system/agentchat-redis.service 0644 root:root
file_from "$HERE/systemd/agentchat-broker.service" /etc/systemd/system/agentchat-broker.service 0644 root:root
if [ "$PORT_443" -eq 1 ]; then
    directory /etc/systemd/system/agentchat-broker.service.d 0755 root:root
    file_from "$HERE/systemd/agentchat-broker-port-443.conf" \
        /etc/systemd/system/agentchat-broker.service.d/port-443.conf 0644 root:root
fi
UNITS_CHANGED=$CHANGED
[ "$UNITS_BEFORE" -eq 0 ] || CHANGED=1
[ "$UNITS_CHANGED" -eq 0 ] || CHANGED=1

# 6. Redis's configuration.
file_from "$HERE/redis/agentchat-redis.conf" /etc/agentchat/redis.conf 0640 root:agentchat

# 7. The broker's configuration, the two Redis passwords (the broker's, readable by the agentchat group, and the
# operators' admin one, root only), and Redis's ACL users with the passwords' SHA-256.
if [ -f "$ROOT$ENV_FILE" ]; then
    existing_issuer=$(sed -n 's/^AGENTCHAT_ISSUER=//p' "$ROOT$ENV_FILE" | tail -n 1)
    if [ -n "$DOMAIN" ] && [ "$existing_issuer" != "https://$DOMAIN" ]; then
        echo "install.sh: note: $ENV_FILE keeps AGENTCHAT_ISSUER=$existing_issuer (not changed to https://$DOMAIN;" \
            "edit it yourself)" >&2
    fi
fi
sed -e "s|@ISSUER@|https://$DOMAIN|" "$HERE/agentchat.env.in" |
    generated_file "$ENV_FILE" 0640 root:agentchat "the broker's configuration, issuer https://$DOMAIN"
password_file() {
    # password_file PATH: the password in PATH (generated when PATH does not exist yet).
    if [ -f "$ROOT$1" ]; then
        head -n 1 "$ROOT$1"
    else
        random_hex
    fi
}
BROKER_PASSWORD=$(password_file "$BROKER_PASSWORD_FILE")
ADMIN_PASSWORD=$(password_file "$ADMIN_PASSWORD_FILE")
if [ -z "$BROKER_PASSWORD" ] || [ -z "$ADMIN_PASSWORD" ]; then
    fail "$BROKER_PASSWORD_FILE or $ADMIN_PASSWORD_FILE is empty: delete both and $ACL_FILE to generate new ones"
fi
printf '%s\n' "$BROKER_PASSWORD" |
    generated_file "$BROKER_PASSWORD_FILE" 0640 root:agentchat "generated Redis password of the broker's ACL user"
printf '%s\n' "$ADMIN_PASSWORD" |
    generated_file "$ADMIN_PASSWORD_FILE" 0600 root:root "generated Redis password of the admin ACL user"
BROKER_HASH=$(printf '%s' "$BROKER_PASSWORD" | sha256sum | cut -d' ' -f1)
ADMIN_HASH=$(printf '%s' "$ADMIN_PASSWORD" | sha256sum | cut -d' ' -f1)
sed -e "s|@BROKER_PASSWORD_SHA256@|$BROKER_HASH|" -e "s|@ADMIN_PASSWORD_SHA256@|$ADMIN_HASH|" \
    "$HERE/redis/redis-users.acl.in" |
    generated_file "$ACL_FILE" 0640 root:agentchat "Redis users: agentchat (the broker), admin; default off"

# 8. Services: Debian's own redis-server (TCP 6379, no password) is not used; ours are enabled and started, and
# restarted when this run changed anything.
if [ "$SKIP_SYSTEM" -eq 1 ]; then
    skipped "systemctl disable --now redis-server.service"
    skipped "systemctl daemon-reload"
    skipped "systemctl enable --now agentchat-redis.service agentchat-broker.service"
else
    if systemctl is-enabled --quiet redis-server.service 2>/dev/null || systemctl is-active --quiet redis-server.service; then
        system_step "systemctl disable --now redis-server.service (Debian's default instance)" \
            systemctl disable --now redis-server.service
    else
        ok "Debian's redis-server.service is disabled"
    fi
    if [ "$UNITS_CHANGED" -eq 1 ]; then
        system_step "systemctl daemon-reload" systemctl daemon-reload
    else
        ok "units unchanged: no daemon-reload"
    fi
    if systemctl is-enabled --quiet agentchat-redis.service 2>/dev/null \
        && systemctl is-enabled --quiet agentchat-broker.service 2>/dev/null \
        && systemctl is-active --quiet agentchat-redis.service && systemctl is-active --quiet agentchat-broker.service; then
        if [ "$CHANGED" -eq 1 ]; then
            system_step "systemctl restart agentchat-redis.service agentchat-broker.service (files changed)" \
                systemctl restart agentchat-redis.service agentchat-broker.service
        else
            ok "agentchat-redis and agentchat-broker enabled and running"
        fi
    else
        system_step "systemctl enable --now agentchat-redis.service agentchat-broker.service" \
            systemctl enable --now agentchat-redis.service agentchat-broker.service
    fi
fi
if [ "$CHANGED" -eq 0 ]; then echo "Nothing changed."; fi
