"""Files under the data directory: job folders, logs, datasets."""
