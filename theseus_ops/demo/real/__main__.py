import sys

from theseus_ops.demo.real.build import main

sys.exit(main())
