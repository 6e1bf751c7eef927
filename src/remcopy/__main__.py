from remcopy.cli.main import main

main()
