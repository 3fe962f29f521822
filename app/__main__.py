"""`python -m app`: the same command line as `claude-agent-service`."""

import sys

from app.cli import main

sys.exit(main())
