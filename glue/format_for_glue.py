import os
import sys
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from stilts.cli.format_for_glue import main  # noqa: E402
main()
