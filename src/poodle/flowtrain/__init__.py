"""Label-free optical flow: train torchvision's RAFT on the user's own frame pairs with UFlow/SMURF losses."""
