from poodle.cli import main

raise SystemExit(main())
