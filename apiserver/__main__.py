"""`python -m apiserver`: the same as the `clustermesh-apiserver` console script."""

import sys

from apiserver import main

sys.exit(main.main())
