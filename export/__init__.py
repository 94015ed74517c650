"""Deployment side: `export/runner.py` classifies images with a .tflite model, no TensorFlow."""
