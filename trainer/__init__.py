"""The trainer: SFT and GRPO (reinforcement fine-tuning) of vision-language models on DeepSpeed."""
