"""Files: model directories, task vectors, calibration sets and alignment files."""
