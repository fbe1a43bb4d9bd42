"""Relevance: LRP/CRP on zennit (composites, canonizers, conditional heatmaps, class relevance)."""
