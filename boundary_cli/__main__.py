from boundary_cli.cli import main

raise SystemExit(main())
