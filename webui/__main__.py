"""`python -m webui <command> ...`"""

from webui.cli import main

raise SystemExit(main())
