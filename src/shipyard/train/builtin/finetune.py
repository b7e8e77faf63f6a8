"""The built-in fine-tuning trainer: LoRA on a causal language model with transformers + peft.

Run by a TrainJob on the torch-distributed runtime (``BuiltinTrainer`` in the SDK) as
``python finetune.py --config JSON`` under torchrun; one process works alone, several train
with DistributedDataParallel over gloo (CPU) or nccl (GPU), each on its shard of the data.

It reads the model from ``<workdir>/model`` and the JSONL dataset from ``<workdir>/dataset``
(what the initializers wrote) unless the config names others, reports loss and progress every
step, checkpoints the adapter after every epoch (and on SIGTERM), resumes from the latest
checkpoint on a restart, and writes the result to ``<workdir>/output/``: the merged model with
its tokenizer (servable as is), or the adapter alone with ``merge: false``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path
from typing import Any

from shipyard.train.types import FineTuneConfig


def read_texts(path: Path, config: FineTuneConfig) -> list[str]:
    """The training texts of a JSONL file (or every ``*.jsonl`` in a folder); ValueError names the line."""
    files = sorted(path.glob("*.jsonl")) if path.is_dir() else [path]
    if not files or not all(file.is_file() for file in files):
        raise ValueError(f"dataset: no JSONL file at {path}")
    texts = []
    for file in files:
        for number, line in enumerate(file.read_text().splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except ValueError as exc:
                raise ValueError(f"dataset {file} line {number}: not JSON ({exc})") from None
            texts.append(_text_of(row, config, f"{file} line {number}"))
    if not texts:
        raise ValueError(f"dataset: {path} holds no rows")
    return texts


def _text_of(row: Any, config: FineTuneConfig, where: str) -> str:
    fields = [config.prompt_field, config.response_field] if config.prompt_field else [config.text_field]
    if not isinstance(row, dict) or any(not isinstance(row.get(name), str) for name in fields if name):
        raise ValueError(f"dataset {where}: expected an object with string field(s) "
                         f"{', '.join(repr(name) for name in fields if name)}")
    return " ".join(row[name] for name in fields if name)


def main(argv: list[str] | None = None) -> int:
    """Fine-tune and write ``<workdir>/output``; the exit code is the job's result."""
    parser = argparse.ArgumentParser(description="LoRA fine-tuning of a causal LM (Shipyard's built-in trainer).")
    parser.add_argument("--config", required=True, help="FineTuneConfig as JSON.")
    arguments = parser.parse_args(argv)
    try:
        config = FineTuneConfig.from_json(arguments.config)
    except (ValueError, TypeError) as exc:
        print(f"finetune: --config: {exc}", file=sys.stderr)
        return 2
    workdir = Path(os.environ.get("SHIPYARD_JOB_DIR") or ".")
    model_dir = Path(config.model) if config.model else workdir / "model"
    data_path = Path(config.dataset) if config.dataset else workdir / "dataset"
    try:
        texts = read_texts(data_path, config)
        if not (model_dir / "config.json").is_file():
            raise ValueError(f"model: no transformers model (config.json) in {model_dir}")
    except ValueError as exc:
        print(f"finetune: {exc}", file=sys.stderr)
        return 2
    return train(config, model_dir, texts, workdir / "output")


def train(config: FineTuneConfig, model_dir: Path, texts: list[str], output: Path) -> int:
    import torch
    import torch.distributed as dist
    from peft import LoraConfig, get_peft_model, get_peft_model_state_dict, set_peft_model_state_dict
    from transformers import AutoModelForCausalLM, AutoTokenizer

    import shipyard.train as st

    st.stop_requested()  # installs the SIGTERM handler before anything slow
    rank, world = st.rank(), st.world_size()
    if world > 1:
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    torch.manual_seed(config.seed)
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir), local_files_only=True)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    base = AutoModelForCausalLM.from_pretrained(str(model_dir), local_files_only=True)
    lora = config.peft_config
    model = get_peft_model(base, LoraConfig(r=lora.lora_rank, lora_alpha=lora.lora_alpha,
                                            lora_dropout=lora.lora_dropout, target_modules=lora.lora_attn_modules,
                                            task_type="CAUSAL_LM"))
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=config.learning_rate)
    done = 0
    state = st.load_checkpoint()
    if state is not None:
        set_peft_model_state_dict(model, state["adapter"])
        optimizer.load_state_dict(state["optimizer"])
        done = int(state["step"])
        print(f"resumed from step {done}", flush=True)
    trained = torch.nn.parallel.DistributedDataParallel(model) if world > 1 else model
    shard = texts[rank::world] or texts[:1]
    batches = [shard[i:i + config.batch_size] for i in range(0, len(shard), config.batch_size)]
    total = config.epochs * len(batches)

    def checkpoint(step: int) -> None:
        if rank == 0:
            st.save_checkpoint({"adapter": get_peft_model_state_dict(model), "optimizer": optimizer.state_dict(),
                                "step": step}, step=step)
        if world > 1:
            dist.barrier()

    model.train()
    step = 0
    for epoch in range(config.epochs):
        for batch in batches:
            step += 1
            if step <= done:
                continue
            encoded = tokenizer(batch, padding=True, truncation=True, max_length=config.max_length,
                                return_tensors="pt")
            labels = encoded["input_ids"].masked_fill(encoded["attention_mask"] == 0, -100)
            loss = trained(**encoded, labels=labels).loss
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            print(f"epoch {epoch} step {step}/{total} loss {loss.item():.4f}", flush=True)
            st.report(metrics={"loss": round(loss.item(), 6), "epoch": epoch}, step=step, progress=100 * step / total)
            if _stop_everywhere(st.stop_requested(), world):
                checkpoint(step)
                print(f"stopping at step {step} (SIGTERM); checkpoint saved", flush=True)
                return 143
        if step > done:
            checkpoint(step)
    if rank == 0:
        write_output(model, tokenizer, output, merge=config.merge)
        print(f"wrote {output}", flush=True)
    if world > 1:
        dist.barrier()
        dist.destroy_process_group()
    return 0


def _stop_everywhere(requested: bool, world: int) -> bool:
    """Whether any rank was asked to stop: all ranks must leave the loop together, or DDP hangs."""
    if world == 1:
        return requested
    import torch
    import torch.distributed as dist

    flag = torch.tensor([1 if requested else 0])
    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    return bool(flag.item())


def write_output(model: Any, tokenizer: Any, output: Path, merge: bool) -> None:
    """The merged model (or the adapter) and the tokenizer, written beside ``output`` then renamed into place."""
    staging = output.with_name(f".{output.name}.{os.getpid()}.tmp")
    shutil.rmtree(staging, ignore_errors=True)
    result = model.merge_and_unload() if merge else model
    result.save_pretrained(str(staging))
    tokenizer.save_pretrained(str(staging))
    if output.exists():
        shutil.rmtree(output)
    staging.rename(output)


if __name__ == "__main__":
    sys.exit(main())
