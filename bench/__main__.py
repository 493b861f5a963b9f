"""`python -m bench`: the same as `bench/run` once the environment is set up."""

from bench.run import main

raise SystemExit(main())
