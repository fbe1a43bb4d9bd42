"""``python -m semlens.cli`` (what ``torchrun ... -m semlens.cli run`` starts)."""

from . import main

main()
