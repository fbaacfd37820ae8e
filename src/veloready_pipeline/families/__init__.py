"""Model families: the interface (`base.ModelFamily`) and the one table of them.

Every place that asks "which family?" looks the name up here (`FAMILIES.get(name)`, or
`family(name)`); an unknown name fails with the known ones listed. Adding a family is
its module (a `ModelFamily` subclass) and one registration line below.

    python -c "from veloready_pipeline.families import FAMILIES; print(FAMILIES.names())"
"""

from veloready_pipeline.families.base import (
    FAMILIES,
    MODEL_KINDS,
    FamilyTable,
    ModelFamily,
    UnknownFamilyError,
)
from veloready_pipeline.families.injury import INJURY
from veloready_pipeline.families.recovery import RECOVERY
from veloready_pipeline.families.zones import ZONES

FAMILIES.register(RECOVERY)
FAMILIES.register(ZONES)
FAMILIES.register(INJURY)


def family(name: str) -> ModelFamily:
    """The registered family called ``name`` (`UnknownFamilyError` otherwise)."""
    return FAMILIES.get(name)


__all__ = ["FAMILIES", "MODEL_KINDS", "FamilyTable", "ModelFamily", "UnknownFamilyError",
           "family"]
