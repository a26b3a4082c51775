import sys

from eval.cli import main, score_main

# `python -m eval score …` scores images; anything else is `iipa eval`.
if sys.argv[1:2] == ["score"]:
    sys.exit(score_main(sys.argv[2:], prog="python -m eval score"))
sys.exit(main(prog="python -m eval"))
