"""mergeopt's alembic migrations (env.py, versions/), shipped inside the package so that a wheel
or a non-editable install can run `mergeopt db upgrade`; service/db/migrate.py finds this folder
through importlib.resources. Alembic loads env.py and versions/ from files, never by import."""
