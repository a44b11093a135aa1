from mopq.cli import main

raise SystemExit(main())
