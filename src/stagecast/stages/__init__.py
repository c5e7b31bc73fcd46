"""The stage modes as producers of protocol events, and the runs that own them."""

from stagecast.stages.context import StageContext, StageOutcome
from stagecast.stages.runs import StageManager, StageRun

__all__ = ["StageContext", "StageManager", "StageOutcome", "StageRun"]
