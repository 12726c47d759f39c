"""Tripwire in a Hugging Face ``Trainer``: a tiny Llama built from a config, synthetic tokens.

    python examples/huggingface_trainer.py --steps 100

Nothing is downloaded. The callback names the run after ``run_name`` and stores the
TrainingArguments and the model config with it.
"""

from __future__ import annotations

import argparse
import tempfile

import torch
from transformers import LlamaConfig, LlamaForCausalLM, Trainer, TrainingArguments

from collector.integrations.huggingface import TripwireCallback


class RandomTokens(torch.utils.data.Dataset):
    def __init__(self, n: int = 512, length: int = 32, vocab: int = 128):
        self.ids = torch.randint(0, vocab, (n, length), generator=torch.Generator().manual_seed(0))

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, i):
        return {"input_ids": self.ids[i], "labels": self.ids[i]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--db",
        default=None,
        help="database URL (default: $TRIPWIRE_DB_URL or sqlite:///tripwire.db)",
    )
    parser.add_argument("--run", default="hf-tiny-llama")
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--every", type=int, default=10)
    parser.add_argument("--halt-on-alert", action="store_true")
    args = parser.parse_args()

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=128,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=64,
    )
    with tempfile.TemporaryDirectory() as output_dir:
        training_args = TrainingArguments(
            output_dir=output_dir,
            run_name=args.run,
            max_steps=args.steps,
            per_device_train_batch_size=8,
            gradient_accumulation_steps=2,
            learning_rate=1e-3,
            logging_steps=args.every,
            save_strategy="no",
            report_to="none",
            use_cpu=True,
            disable_tqdm=True,
        )
        tripwire = TripwireCallback(db=args.db, every=args.every, halt_on_alert=args.halt_on_alert)
        trainer = Trainer(
            model=LlamaForCausalLM(config),
            args=training_args,
            train_dataset=RandomTokens(),
            callbacks=[tripwire],
        )
        trainer.train()
    monitor = tripwire.monitor
    print(
        f"run {monitor.name!r}: {trainer.state.global_step} steps, {monitor.checks} checks, {monitor.errors} errors"
    )


if __name__ == "__main__":
    main()
