"""Exporting a fine-tune for laptops: one GGUF file (llama.cpp, ollama, LM Studio) and an ollama Modelfile."""
