from ztb.cli import main

main()
