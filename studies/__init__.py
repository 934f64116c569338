"""The project's studies: the measurements behind the shipped defaults, head lists and the numbers in docs/.

Each module is one study, run from a checkout with ``python -m studies.<name> ...`` (``--help`` says how); the
labelled data sets are read from ../shared/data. Nothing here ships in the wheel, and nothing here changes the
package: bundled head lists are written only by ``python -m studies.bundle`` (an explicit command, reviewed as
a diff). The engine is used through its public API only.
"""

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
"""The labelled data sets (../shared/data beside the checkout); each study takes ``--data`` to read another."""
