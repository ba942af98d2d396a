"""`python -m mlm_export.cli`: the same as the `mlm-export` command."""

from . import main

if __name__ == "__main__":  # pragma: no cover
    main()
