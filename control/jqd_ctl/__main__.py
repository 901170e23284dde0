from jqd_ctl.cli import main

raise SystemExit(main())
