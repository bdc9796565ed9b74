"""Evaluation of pretrained backbones by semantic segmentation: metrics, class groups, readouts and result tables."""
