"""From a path to a vector: scanning, decoding, the DINOv3 backbone, the indexing pipeline and the CLI."""
