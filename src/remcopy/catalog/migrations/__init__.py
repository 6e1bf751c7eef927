# The catalog's numbered Alembic migrations (versions/NNNN_*.py) and the env.py that runs them
# on the connection Catalog.open() hands over. See remcopy.catalog.migrate.
