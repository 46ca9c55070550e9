"""The browser chat (``scripts/webui.py``): a Gradio page over the terminal chat's engine."""
