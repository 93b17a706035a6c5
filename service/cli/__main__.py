"""`python -m service.cli`: the `mergeopt` console script."""

import sys

from service.cli.main import main

sys.exit(main())
