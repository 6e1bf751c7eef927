"""The `remcopy` command line: a front end over the Python API, with no logic of its own."""
