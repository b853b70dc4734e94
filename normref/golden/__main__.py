"""`python -m normref.golden build [--out DIR]`: the same as `normref golden build`."""

import sys

from normref.cli import golden_main

if __name__ == "__main__":
    sys.exit(golden_main())
