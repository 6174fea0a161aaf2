from circuitflow.cli import main

main()
