#!/usr/bin/env bash
# From a fresh checkout to a running guardian, in one command:
#
#   scripts/quickstart.sh
#
# builds `sisy`, starts a throwaway PostgreSQL (installing it with apt-get when it is missing
# and we are root), creates the schema, adds a sample job that runs every ten seconds, prints
# the query to watch it, and runs a guardian in the foreground. Ctrl-C stops the guardian;
# the database stays up so you can look around (the script prints how to stop it).
# SISY_QUICKSTART_DIR (default /tmp/sisy-quickstart) holds the database and the config.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
dir=${SISY_QUICKSTART_DIR:-/tmp/sisy-quickstart}
mkdir -p "$dir"

if [[ -f $HOME/.cargo/env ]]; then source "$HOME/.cargo/env"; fi
echo "quickstart: building sisy (cargo build; a debug build is quicker to make and plenty for a demo)…" >&2
cargo build --quiet --bin sisy
sisy=$PWD/target/debug/sisy

echo "quickstart: starting a throwaway PostgreSQL in $dir/pg…" >&2
url=$(scripts/throwaway-pg.sh start "$dir/pg")
export SISY_DATABASE_URL=$url

"$sisy" db migrate
psql -q "$url" -v ON_ERROR_STOP=1 <<'SQL'
INSERT INTO sisy.jobs (name, command, schedule)
VALUES ('hello', 'echo "hello from $SISY_JOB, run $SISY_RUN_ID on $(hostname)"', '*/10 * * * * *')
ON CONFLICT (name) DO NOTHING;
SQL

cat > "$dir/guardian.toml" <<TOML
# A guardian for the quickstart. Every key is documented in packaging/guardian.toml.
database_url = "$url"
pools = ["default"]
capacity = 4
state_dir = "$dir/state"
TOML
mkdir -p "$dir/state"

cat >&2 <<MSG

quickstart: a guardian is starting; the job 'hello' runs every ten seconds. In another terminal:

  psql '$url' -c 'SELECT id, job_name, state, scheduled_for, started_at - due_at AS latency, output FROM sisy.runs ORDER BY id DESC LIMIT 10'

Add your own job:   psql '$url' -c "INSERT INTO sisy.jobs (name, command, schedule) VALUES ('df', 'df -h /', '*/5 * * * *')"
Stop with Ctrl-C; then stop the database: scripts/throwaway-pg.sh stop $dir/pg

MSG
exec "$sisy" guardian --config "$dir/guardian.toml"
