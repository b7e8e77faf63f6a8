"""Built-in trainers: scripts that run inside a TrainJob (``finetune``: LoRA fine-tuning with peft)."""
