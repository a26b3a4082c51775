import sys

from shards.cli import main

sys.exit(main(prog="python -m shards"))
