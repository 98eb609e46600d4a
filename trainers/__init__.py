"""LoRA + DPO trainers (torch, MLX) and GGUF adapter export (issues 5 and 7)."""
