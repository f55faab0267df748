"""`python -m whisper_zh` runs the command-line interface."""

import sys

from whisper_zh.cli import main

sys.exit(main())
