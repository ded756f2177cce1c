"""Datasets and file formats: the readers of each dataset kind, the manifest table, image
decoding, WebDataset shards, the classifier runs' table and a synthetic set's card."""
