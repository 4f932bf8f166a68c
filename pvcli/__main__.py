from pvcli.cli import main

main()
