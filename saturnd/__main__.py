"""`python -m saturnd`: the same as the `saturnd` console script."""

import sys

from saturnd.cli import main

if __name__ == "__main__":
    sys.exit(main())
