import sys

from mailwarden.listener import cli

sys.exit(cli.main())
