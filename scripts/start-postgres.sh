#!/usr/bin/env bash
# Start a throwaway PostgreSQL 15 server for kfaclab's multi-worker tests, idempotently:
# a cluster in $PGROOT/data (created once), listening on 127.0.0.1:$PGPORT with its socket in
# $PGROOT, trust authentication (local test server only), and a role + database "kfaclab".
# Prints the URL to export, e.g.
#   export KFACLAB_TEST_POSTGRES=$(scripts/start-postgres.sh | tail -1)
# Run as root (the server runs as the `postgres` user) or as the user that owns $PGROOT.
set -euo pipefail
PGROOT=${PGROOT:-/tmp/pg}
PGPORT=${PGPORT:-5432}
PGBIN=${PGBIN:-$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)}
DB=${KFACLAB_PG_DB:-kfaclab_test}

as_pg() {
    if [[ $(id -u) == 0 ]]; then su postgres -s /bin/bash -c "$*"; else bash -c "$*"; fi
}

mkdir -p "$PGROOT"
[[ $(id -u) == 0 ]] && chown postgres "$PGROOT"
if [[ ! -f "$PGROOT/data/PG_VERSION" ]]; then
    as_pg "'$PGBIN/initdb' -D '$PGROOT/data' -A trust -U postgres >/dev/null"
fi
if ! as_pg "'$PGBIN/pg_ctl' -D '$PGROOT/data' status" >/dev/null 2>&1; then
    as_pg "'$PGBIN/pg_ctl' -D '$PGROOT/data' -w -t 60 -l '$PGROOT/log' \
        -o \"-k $PGROOT -p $PGPORT -c listen_addresses=127.0.0.1 -c max_connections=200\" start" \
        >/dev/null
fi
psql_pg() { as_pg "'$PGBIN/psql' -h '$PGROOT' -p $PGPORT -U postgres -d postgres -tAq -c \"$1\""; }
if [[ -z $(psql_pg "SELECT 1 FROM pg_roles WHERE rolname = 'kfaclab'") ]]; then
    psql_pg "CREATE ROLE kfaclab LOGIN PASSWORD 'kfaclab'"
fi
if [[ -z $(psql_pg "SELECT 1 FROM pg_database WHERE datname = '$DB'") ]]; then
    psql_pg "CREATE DATABASE $DB OWNER kfaclab"
fi
echo "postgresql://kfaclab:kfaclab@127.0.0.1:$PGPORT/$DB"
