"""The training engine shared by every stage: loop, checkpoints, resume, logging, multi-process."""
