"""`python -m bench` (what `make bench` runs): ztb against a bare mTLS reverse proxy."""

import sys

from bench.proxy_bench import main

sys.exit(main(sys.argv[1:]))
