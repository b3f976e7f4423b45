import sys

from tools.demo.demo import main

sys.exit(main(sys.argv[1:]))
