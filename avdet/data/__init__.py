"""Video/audio decoding, spectrograms, clip indexes, clip preparation, COCO files, the toy set."""
