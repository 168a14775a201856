"""Fine-tuning of pretrained Hugging Face-format models (LoRA or full), run as a child process.

Torch-free, like the built-in trainer's light modules: :mod:`.hyperparams` (the schema and
its validation) and :mod:`.spec` (the job spec and the command line a worker runs) import
without torch or transformers, so the API can validate a fine-tuning job. The rest needs
the ``train`` and ``finetune`` extras: :mod:`.render` (chat templates and loss masks),
:mod:`.data` (examples, packing, batches), :mod:`.modeling` (loading, LoRA), :mod:`.state`
(checkpoints), :mod:`.trainer` (the loop) and the command line in :mod:`.__main__`::

    python -m llm_train_api.training.hf run --job-dir DIR [--spec SPEC.json]

It keeps the built-in trainer's contract: the stdout protocol of
:mod:`llm_train_api.training.events`, ``metrics.jsonl``, exit codes 0/1/2/75, exact resume.
"""
