"""Merging: the method formulas, the resident pool and model, memory placement, fused/bounded/native paths, formats (mergekit YAML, export)."""
