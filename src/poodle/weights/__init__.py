"""Foreign weights: a reader that never runs pickled code, published layouts, converters and exports."""
