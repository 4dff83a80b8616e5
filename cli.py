"""The ``simclr-xb`` command line lives in simclr_xb/cli.py; this shim runs it (python cli.py ...)."""
from simclr_xb.cli import main

if __name__ == "__main__":
    main()
