from mdmctl.cli import main

main()
