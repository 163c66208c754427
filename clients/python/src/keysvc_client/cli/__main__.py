"""`python -m keysvc_client.cli`: the `keysvc` command, where its script is not on PATH."""

import sys

from keysvc_client.cli import main

sys.exit(main())
