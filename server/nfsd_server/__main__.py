from nfsd_server.cli import main

raise SystemExit(main())
