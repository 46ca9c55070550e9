"""Kaggle jobs: what a pushed kernel runs (job.py), and publishing datasets and kernels (publish.py).

Where things are on Kaggle is the adapter's business (platforms/kaggle.py); this package does the work.
"""
