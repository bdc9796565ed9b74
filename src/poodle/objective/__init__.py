"""The PooDLe objective: dense flow-equivariance loss + pooled loss on flow-aware subcrops (spec section 4)."""

from poodle.objective.dense import dense_loss, dense_target_and_mask
from poodle.objective.poodle import PairBatch, PooDLeObjective
from poodle.objective.pooled import pooled_loss

__all__ = ["PairBatch", "PooDLeObjective", "dense_loss", "dense_target_and_mask", "pooled_loss"]
