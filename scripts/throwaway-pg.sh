#!/usr/bin/env bash
# A disposable PostgreSQL for trying sisyphus out, for the quickstart and for CI.
#
#   scripts/throwaway-pg.sh start DIR   initialise (if needed) and start a cluster in DIR;
#                                       prints its URL on stdout, and only that
#   scripts/throwaway-pg.sh stop DIR    stop it (fast shutdown); DIR is kept
#   scripts/throwaway-pg.sh status DIR  exit 0 and print the URL if it runs, else exit 3
#   scripts/throwaway-pg.sh install     make sure the server binaries are installed
#
# The cluster listens on a unix socket in DIR and on 127.0.0.1:${PGPORT:-55432} (55432 so as
# not to collide with a system cluster on 5432), with trust authentication and fsync=off:
# any local user can connect as superuser and a crash can lose data. Never put anything
# you want to keep in it. Remove it with `stop` and then `rm -rf DIR`.
#
# When run as root the cluster belongs to the `postgres` user (initdb and postgres refuse
# to run as root), so DIR is chowned to it and must be reachable by it: prefer /tmp/...
# The integration tests do not use this script; they start their own cluster
# (tests/it/pg.rs). SISY_PG_BINDIR overrides where the server binaries are looked for.
set -euo pipefail

readonly DEFAULT_PORT=55432

die() { echo "throwaway-pg: $*" >&2; exit 1; }
say() { echo "throwaway-pg: $*" >&2; }

has_server() { [[ -x $1/postgres && -x $1/initdb && -x $1/pg_ctl ]]; }

# Prints the directory holding postgres, initdb and pg_ctl: $SISY_PG_BINDIR, else the newest
# /usr/lib/postgresql/*/bin (Debian, Ubuntu), else `pg_config --bindir`.
find_bindir() {
    if [[ -n ${SISY_PG_BINDIR:-} ]]; then
        has_server "$SISY_PG_BINDIR" && echo "$SISY_PG_BINDIR"
        return
    fi
    local dir
    while read -r dir; do
        if has_server "$dir"; then echo "$dir"; return 0; fi
    done < <(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V -r)
    dir=$(pg_config --bindir 2>/dev/null) && has_server "$dir" && echo "$dir"
}

# Sets BINDIR, installing the Debian package first when we can (root, apt-get).
ensure_installed() {
    BINDIR=$(find_bindir) && return 0
    local missing="PostgreSQL server binaries not found"
    if [[ $EUID -ne 0 ]]; then
        die "$missing: install postgresql (sudo apt-get install -y postgresql, or your system's PostgreSQL server package), or set SISY_PG_BINDIR to the directory holding postgres and initdb"
    fi
    command -v apt-get >/dev/null || die "$missing and there is no apt-get: install the PostgreSQL server with your package manager"
    say "$missing; installing postgresql with apt-get"
    local log
    log=$(mktemp)
    if ! { DEBIAN_FRONTEND=noninteractive apt-get update -qq &&
           DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql; } </dev/null >"$log" 2>&1; then
        tail -n 30 "$log" >&2
        rm -f "$log"
        die "apt-get install postgresql failed (output above)"
    fi
    rm -f "$log"
    BINDIR=$(find_bindir) || die "postgresql was installed but its server binaries are still not found"
}

# Runs a command as the cluster owner: `postgres` when we are root, else ourselves.
as_owner() {
    if [[ $EUID -ne 0 ]]; then
        "$@"
    elif command -v runuser >/dev/null; then
        runuser -u postgres -- "$@"
    else
        su -s /bin/sh postgres -c "$(printf '%q ' "$@")"
    fi
}

# Creates DIR (owned by the cluster owner) and sets DIR to its absolute path.
prepare_dir() {
    mkdir -p "$DIR"
    DIR=$(cd "$DIR" && pwd -P)
    if [[ $EUID -eq 0 ]]; then
        id postgres >/dev/null 2>&1 || die "there is no postgres user to run the server as: install postgresql"
        chown postgres:postgres "$DIR"
        as_owner test -w "$DIR" -a -x "$DIR" ||
            die "the postgres user cannot reach $DIR (a parent directory is closed to it): use a directory under /tmp"
    fi
    chmod 700 "$DIR"
    # The kernel limits a unix socket path to 107 bytes.
    local socket="$DIR/.s.PGSQL.$PORT"
    (( ${#socket} <= 107 )) || die "$DIR is too long for a unix socket path: use a shorter directory, e.g. under /tmp"
}

is_running() { [[ -f $DIR/data/PG_VERSION ]] && as_owner "$BINDIR/pg_ctl" -D "$DIR/data" status >/dev/null 2>&1; }

# The URL of the running cluster, with the port it actually runs on (PGPORT may differ).
print_url() {
    local port
    port=$(sed -n 4p "$DIR/data/postmaster.pid")
    echo "postgres://postgres@127.0.0.1:$port/postgres"
}

init_cluster() {
    [[ -f $DIR/data/PG_VERSION ]] && return 0
    say "initialising a cluster in $DIR/data"
    as_owner "$BINDIR/initdb" -D "$DIR/data" -A trust -U postgres --no-sync -E UTF8 --locale=C \
        >"$DIR/initdb.log" 2>&1 || { cat "$DIR/initdb.log" >&2; die "initdb failed (output above)"; }
    # In the config rather than on the command line so that quoting DIR is not an issue and
    # a human running pg_ctl by hand gets the same server. The port stays on the command
    # line so that PGPORT can change between starts.
    as_owner tee -a "$DIR/data/postgresql.conf" >/dev/null <<EOF

# Added by scripts/throwaway-pg.sh: a throwaway cluster, durability traded for speed.
listen_addresses = '127.0.0.1'
unix_socket_directories = '$DIR'
fsync = off
synchronous_commit = off
full_page_writes = off
max_connections = 300
EOF
}

start() {
    ensure_installed
    prepare_dir
    init_cluster
    if is_running; then
        print_url
        return 0
    fi
    # cd: initdb and postgres want to read their working directory, and the postgres user
    # may not be allowed into ours.
    if ! (cd "$DIR" && as_owner "$BINDIR/pg_ctl" -D "$DIR/data" -l "$DIR/postgres.log" \
            -o "-p $PORT" -w -t 60 start >/dev/null); then
        tail -n 20 "$DIR/postgres.log" >&2 || true
        die "postgres did not start (log above; if port $PORT is taken, set PGPORT)"
    fi
    print_url
}

stop() {
    BINDIR=$(find_bindir) || die "PostgreSQL server binaries not found: nothing can be running"
    [[ -d $DIR ]] || { say "$DIR does not exist: nothing to stop"; return 0; }
    DIR=$(cd "$DIR" && pwd -P)
    if ! is_running; then
        say "no cluster running in $DIR"
        return 0
    fi
    (cd "$DIR" && as_owner "$BINDIR/pg_ctl" -D "$DIR/data" -m fast -w stop >/dev/null)
    say "stopped the cluster in $DIR"
}

status() {
    BINDIR=$(find_bindir) || die "PostgreSQL server binaries not found"
    [[ -d $DIR ]] && DIR=$(cd "$DIR" && pwd -P) && is_running || { say "not running"; exit 3; }
    print_url
}

usage() { die "usage: $0 start DIR | stop DIR | status DIR | install"; }

PORT=${PGPORT:-$DEFAULT_PORT}
case ${1:-} in
    start | stop | status)
        [[ $# -eq 2 ]] || usage
        DIR=$2
        "$1"
        ;;
    install)
        ensure_installed
        say "server binaries in $BINDIR"
        ;;
    *) usage ;;
esac
