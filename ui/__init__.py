"""The Streamlit search page (to come: query by example, neighbours, patch-similarity heatmaps)."""
