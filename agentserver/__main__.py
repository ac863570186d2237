"""`python -m agentserver`: see agentserver/cli.py."""

import sys

from agentserver.cli import main

if __name__ == "__main__":
    sys.exit(main())
