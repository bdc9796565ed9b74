"""SynthDrive: an embedded, procedurally rendered driving-video world with exact labels, flow and occlusion.

from poodle.data.synthdrive import SynthDriveSequence, generate_dataset, PRESETS
"""

from poodle.data.synthdrive.dataset import PRESETS, Preset, generate_dataset, sequence_name
from poodle.data.synthdrive.flo import read_flo, write_flo
from poodle.data.synthdrive.sequence import SynthDriveError, SynthDriveSequence, benchmark, check_resolution

__all__ = [
    "PRESETS",
    "Preset",
    "SynthDriveError",
    "SynthDriveSequence",
    "benchmark",
    "check_resolution",
    "generate_dataset",
    "read_flo",
    "sequence_name",
    "write_flo",
]
