"""Models: tokenizer and base model loading, LoRA, the offline tiny Llama and SmolLM2."""
