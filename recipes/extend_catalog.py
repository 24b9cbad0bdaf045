"""Add new items to a trained GTI adapter (same as `gti-peft extend-catalog`):

python recipes/extend_catalog.py --adapter ADAPTER --new-items NEW.csv --output NEW_ADAPTER
"""

from gti_peft.cli.extend_catalog import main

if __name__ == "__main__":
    main()
