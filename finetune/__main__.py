import sys

from finetune.main import main

sys.exit(main())
