"""`python -m kdtrain.cli`: what worker processes run."""

import sys

from kdtrain.cli.commands import main

sys.exit(main())
