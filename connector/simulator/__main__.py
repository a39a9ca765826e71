import sys

from connector.simulator.cli import main

sys.exit(main())
