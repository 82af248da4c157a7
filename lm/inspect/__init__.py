"""Looking inside a model and its runs: attention maps, plots, the offline explorer, run directories."""
