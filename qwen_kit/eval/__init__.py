"""Evaluation: multiple-choice scoring that agrees with OpenCompass, and the OpenCompass runner."""
