#!/bin/bash
# One database per domain (vertical partitioning), each owned by a role of its own that may reach
# only it; the shared database (sessions, sign-ins, the event log, the bus's dead letters and
# read-only switches) belongs to the site role. Passwords come from the environment. After the
# migrations, `manage.py bus grant inventory orders payments` lets the domain roles use the bus's
# own tables in the shared database, and nothing else there.
set -euo pipefail
export PGPASSWORD="$POSTGRESQL_PASSWORD"
for pair in site:presentation inventory:inventory orders:orders payments:payments; do
    role="${pair%%:*}" database="${pair##*:}"
    variable="POSTGRES_$(echo "$role" | tr a-z A-Z)_PASSWORD"
    password="${!variable:?$variable is not set: every domain needs its own database password}"
    psql -v ON_ERROR_STOP=1 -U postgres -v role="$role" -v database="$database" -v password="$password" <<'SQL'
CREATE ROLE :"role" LOGIN PASSWORD :'password';
CREATE DATABASE :"database" OWNER :"role";
REVOKE ALL ON DATABASE :"database" FROM PUBLIC;
SQL
done
