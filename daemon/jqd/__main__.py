from jqd.cli import main

raise SystemExit(main())
