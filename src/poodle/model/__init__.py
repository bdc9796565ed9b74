"""PooDLe networks: ResNet encoder, spatial decoder module (SDM), projection heads, EMA target, schedules."""

from poodle.model.decoder import SpatialDecoder, make_bottleneck
from poodle.model.encoder import ResNetEncoder, clean_state_dict
from poodle.model.heads import ConvMLP
from poodle.model.networks import TARGET_MODULES, PooDLeNetworks
from poodle.model.schedules import cosine_schedule, ema_momentum, ema_schedule

__all__ = [
    "TARGET_MODULES",
    "ConvMLP",
    "PooDLeNetworks",
    "ResNetEncoder",
    "SpatialDecoder",
    "clean_state_dict",
    "cosine_schedule",
    "ema_momentum",
    "ema_schedule",
    "make_bottleneck",
]
