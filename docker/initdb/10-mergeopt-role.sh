#!/bin/sh
# Run once by the postgres image on a fresh data volume. The API and the workers connect as
# `mergeopt`: owner of the mergeopt database, no superuser (so no COPY ... TO PROGRAM, no
# reading the server's files). The superuser (`postgres`, POSTGRES_PASSWORD) is for the operator.
# An existing volume: run the same SQL once as the superuser.
set -eu
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" -v pw="$MERGEOPT_DB_PASSWORD" <<'SQL'
CREATE ROLE mergeopt LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE PASSWORD :'pw';
ALTER DATABASE mergeopt OWNER TO mergeopt;
ALTER SCHEMA public OWNER TO mergeopt;
SQL
