import sys

from hybrid.main import main

sys.exit(main())
