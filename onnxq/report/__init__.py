"""Reports: the versioned JSON document and its schema, Markdown, HTML with inline SVG, environment capture."""
