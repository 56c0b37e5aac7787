from bascule.cli import main

raise SystemExit(main())
