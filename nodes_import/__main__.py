from nodes_import.cli import main

main()
