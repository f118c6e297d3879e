"""The data wing: the built-in datasets and their registry, your own data (folder, arrays, csv, python), class
mappings and rows keyed by content. Imports only the ground floor."""
