"""The three-stage training pipeline on Accelerate: `python -m aurl.train` / `accelerate launch -m aurl.train`."""
