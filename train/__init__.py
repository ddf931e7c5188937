"""pneumo-edge training: data (folders, checks, splits, decode cache), Keras models, fit, evaluate, report.

Importing ``train`` imports nothing heavy; TensorFlow and Keras are imported
inside the functions that build or fit models.
"""
