#!/usr/bin/env python3
"""The PyTorch + PEFT side of tune-bench (crates/zhiku-tuner/src/bin/tune-bench.rs), which
runs it: LoRA training steps on the CPU in f32 on a GGUF model that transformers
dequantizes, on the token ids tune-bench wrote, with the same LoRA and optimizer settings.
Prints one JSON line: each timed step's seconds, the first step's loss, load seconds and
the peak resident memory of this process. With --batch-size, a step's examples (of varied
lengths) are sorted by length and run that many a forward, each forward right-padded to
its longest example, the loss the mean over the step's counted tokens (as zhiku's).

Setup (PyPI only):
    python3 -m venv /work/.venv-peft
    /work/.venv-peft/bin/pip install torch transformers peft gguf
"""
import argparse
import json
import os
import sys
import time

import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM


def peak_rss_bytes():
    # VmHWM starts anew at exec; getrusage's ru_maxrss would carry over the RSS of the
    # process that forked this one (tune-bench, with its model loaded).
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return None


def padded_step(model, batch, batch_size):
    """Forwards and backwards of one step's examples, sorted by length, batch_size a
    forward, right-padded (attention mask 0, label -100); each forward's mean loss weighed
    by its share of the step's counted tokens. Returns the step's loss."""
    # The first token predicts nothing (labels shift by one).
    counted = lambda e: sum(e["loss_mask"][1:])
    total = sum(counted(e) for e in batch)
    ordered = sorted(batch, key=lambda e: len(e["tokens"]))
    loss = 0.0
    for start in range(0, len(ordered), batch_size):
        chunk = ordered[start : start + batch_size]
        n = sum(counted(e) for e in chunk)
        if n == 0:
            continue
        width = max(len(e["tokens"]) for e in chunk)
        pad = lambda row, value: row + [value] * (width - len(row))
        ids = torch.tensor([pad(e["tokens"], 0) for e in chunk], dtype=torch.long)
        attention = torch.tensor([pad([1] * len(e["tokens"]), 0) for e in chunk])
        mask = torch.tensor([pad(e["loss_mask"], False) for e in chunk], dtype=torch.bool)
        labels = ids.masked_fill(~mask, -100)
        part = model(input_ids=ids, attention_mask=attention, labels=labels).loss * (n / total)
        part.backward()
        loss += part.detach()
    return loss


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--gguf", required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--rank", type=int, default=8)
    p.add_argument("--alpha", type=float, default=16.0)
    p.add_argument("--dropout", type=float, default=0.05)
    p.add_argument("--targets", default="q_proj,v_proj")
    # Block indices (layers_to_transform); empty: every block.
    p.add_argument("--layers", default="")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--lr", type=float, default=2e-4)
    p.add_argument("--gradient-checkpointing", action="store_true")
    # Examples a forward (0: the whole step in one, every example of the same length).
    p.add_argument("--batch-size", type=int, default=0)
    args = p.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    started = time.perf_counter()
    directory, name = os.path.split(os.path.abspath(args.gguf))
    model = AutoModelForCausalLM.from_pretrained(
        directory, gguf_file=name, dtype=torch.float32
    )
    if args.gradient_checkpointing:
        model.gradient_checkpointing_enable()
        model.enable_input_require_grads()
    config = LoraConfig(
        r=args.rank,
        lora_alpha=args.alpha,
        lora_dropout=args.dropout,
        target_modules=args.targets.split(","),
        layers_to_transform=[int(i) for i in args.layers.split(",")] if args.layers else None,
        bias="none",
        task_type="CAUSAL_LM",
    )
    model = get_peft_model(model, config)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(
        params, lr=args.lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0
    )
    load_seconds = time.perf_counter() - started

    with open(args.data) as f:
        steps = json.load(f)
    step_seconds = []
    first_loss = None
    for i, batch in enumerate(steps):
        t = time.perf_counter()
        if args.batch_size == 0:
            ids = torch.tensor([e["tokens"] for e in batch], dtype=torch.long)
            mask = torch.tensor([e["loss_mask"] for e in batch], dtype=torch.bool)
            labels = ids.masked_fill(~mask, -100)
            loss = model(input_ids=ids, labels=labels).loss
            loss.backward()
        else:
            loss = padded_step(model, batch, args.batch_size)
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        seconds = time.perf_counter() - t
        if first_loss is None:
            first_loss = loss.item()
        if i >= args.warmup:
            step_seconds.append(seconds)
        print(f"pytorch step {i + 1}: {seconds:.2f} s, loss {loss.item():.4f}", file=sys.stderr)

    peak = peak_rss_bytes()
    print(
        json.dumps(
            {
                "step_seconds": step_seconds,
                "first_loss": first_loss,
                "load_seconds": load_seconds,
                "peak_rss_bytes": peak,
                "torch": torch.__version__,
                "threads": torch.get_num_threads(),
            }
        )
    )


if __name__ == "__main__":
    main()
