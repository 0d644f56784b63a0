"""python -m lab.vm ...  (the same commands as `toalab vm ...`)."""

import sys

from lab.vm.cli import main

sys.exit(main(sys.argv[1:]))
