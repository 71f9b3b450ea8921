"""Fine-tune / evaluate / predict one GLUE task (the seed's glue/train.py command line)."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from stilts.cli.train import main  # noqa: E402

if __name__ == "__main__":
    main()
