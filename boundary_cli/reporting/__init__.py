"""Writing results: atomic files, run metadata, summaries, figures and sweep reports."""
