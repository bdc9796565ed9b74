"""Data: videos, frames, optical flow geometry, augmentations, subcrops and the SynthDrive world."""
