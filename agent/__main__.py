"""`python -m agent`: the same process as the `clustermesh-agent` console script."""

import sys

from agent.main import main

sys.exit(main())
