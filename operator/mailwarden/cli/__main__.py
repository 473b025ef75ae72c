import sys

from mailwarden.cli import main

sys.exit(main())
