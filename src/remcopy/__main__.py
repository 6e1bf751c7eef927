from remcopy.cli.main import run

run()
