"""python -m gpuops.demo [--port 8000] [--load-seconds 3] ...  (see --help and docs/demo.md)"""

import sys

from gpuops.demo.server import main

if __name__ == "__main__":
    sys.exit(main())
