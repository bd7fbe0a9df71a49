"""`python -m clustermesh` runs the operator command line, like the `clustermesh` console script."""

import sys

from clustermesh.cli.main import main

sys.exit(main())
