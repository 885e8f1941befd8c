from medsearch.cli import main

main()
