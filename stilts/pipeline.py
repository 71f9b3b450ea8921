"""`python -m stilts.pipeline`, as earlier versions documented it: the same command as stilts-run
(stilts/cli/run.py)."""
from stilts.cli.run import main

if __name__ == "__main__":
    main()
