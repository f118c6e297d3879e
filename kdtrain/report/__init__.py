"""The report wing: a finished study read into pandas, Pareto plots, gains over the baselines in words, and
the HTML and Markdown pages."""
