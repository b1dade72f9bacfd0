"""`python -m covip ...` is `covip ...` (see covip.cli)."""

from covip.cli import main

raise SystemExit(main())
