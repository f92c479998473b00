import sys

from ppdeploy.cli import main

sys.exit(main())
