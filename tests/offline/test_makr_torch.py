"""The torch backend (the GGUF dequantized by transformers, calls from many threads fused into
batches) on a real model: SmolLM2-135M on the CPU here, on CUDA where a GPU is present."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

from reaseq.offline import synthetic
from reaseq.offline.datasets import load_dataset
from reaseq.offline.makr.job import MakrConfig, MakrRun
from reaseq.offline.makr.llm import LLMConfig, LLMError, PromptRejected, Sampling, make_backend
from reaseq.offline.makr.llm_batched import BatchedTorchLLM, recent_repeat_penalty
from reaseq.offline.makr.schemas import KnowledgeRecord

pytest.importorskip("gguf", reason="the torch backend reads GGUF through the gguf package")
pytest.importorskip("llama_cpp", reason="compared against the embedded backend")

PROMPTS = [
    f"Product: {name}\nCategory:"
    for name in (
        "Swingline staples, 5000 count",
        "Pilot G2 gel pens, 12 pack",
        "Post-it notes 3x3",
        "HP 61 black ink cartridge",
    )
]
LINE = Sampling(max_tokens=12, stop=["\n"])


@pytest.fixture(scope="module")
def batched() -> BatchedTorchLLM:
    llm = make_backend(
        LLMConfig(backend="torch", model="smollm2-135m", concurrency=8, device="cpu")
    )
    assert isinstance(llm, BatchedTorchLLM)
    yield llm
    llm.close()


def test_concurrent_calls_are_batched_and_answer_as_one_at_a_time(batched):
    one_by_one = [batched.complete(p, LINE) for p in PROMPTS]
    before = batched.batches
    with ThreadPoolExecutor(len(PROMPTS)) as pool:
        together = list(pool.map(lambda p: batched.complete(p, LINE), PROMPTS))
    assert batched.batches - before < len(PROMPTS)  # fused: fewer generate() calls than prompts
    # left padding and per-row stops change nothing: greedy text and counts are the same
    assert [c.text for c in together] == [c.text for c in one_by_one]
    assert [c.completion_tokens for c in together] == [c.completion_tokens for c in one_by_one]
    for done in together:
        assert "\n" not in done.text and 0 < done.completion_tokens <= LINE.max_tokens
        assert done.prompt_tokens > 5


def test_same_weights_as_the_embedded_backend(batched):
    """One identity in cache keys for both backends, so it must be the same model: greedy
    answers agree with llama.cpp's (numerics differ: llama.cpp multiplies quantized blocks)."""
    embedded = make_backend(LLMConfig(backend="embedded", model="smollm2-135m"))
    assert embedded.name == batched.name
    agree = sum(batched.complete(p, LINE).text == embedded.complete(p, LINE).text for p in PROMPTS)
    assert agree >= 3


def test_each_row_keeps_its_own_token_limit_and_a_too_long_prompt_fails_alone(batched):
    short = Sampling(max_tokens=2, stop=["\n"])
    too_long = "word " * (batched.n_ctx + 10)
    calls = [(PROMPTS[0], short), (PROMPTS[1], LINE), (too_long, LINE)]

    def call(args):
        try:
            return batched.complete(*args)
        except PromptRejected as err:
            return err

    with ThreadPoolExecutor(3) as pool:
        first, second, third = pool.map(call, calls)
    assert first.completion_tokens <= 2
    assert second.text and second.completion_tokens <= LINE.max_tokens
    assert isinstance(third, PromptRejected) and "exceeds the context" in str(third)


def test_an_unreadable_prompt_fails_alone_and_its_batch_still_answers(batched):
    calls = [PROMPTS[0], "Product: pens \ud800 blue\nCategory:", PROMPTS[1]]
    gate = threading.Barrier(len(calls))

    def call(prompt):
        gate.wait()  # arrive together: one batch holds the bad prompt and the good ones
        try:
            return batched.complete(prompt, LINE)
        except PromptRejected as err:
            return err

    with ThreadPoolExecutor(3) as pool:
        first, bad, last = pool.map(call, calls)
    assert isinstance(bad, PromptRejected) and "lone surrogate at character 14" in str(bad)
    assert first.text == batched.complete(PROMPTS[0], LINE).text
    assert last.text == batched.complete(PROMPTS[1], LINE).text


def test_out_of_gpu_memory_halves_the_batch_instead_of_failing_it(batched, monkeypatch):
    """OOM cannot be produced on a CPU, so generate() raises it for batches over two rows, as
    a GPU would with too little memory: every caller still gets its answer, and later batches
    start at the size that fitted."""
    real_generate = batched.model.generate
    sizes = []

    def generate_with_little_memory(**kwargs):
        sizes.append(kwargs["input_ids"].shape[0])
        if sizes[-1] > 2:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return real_generate(**kwargs)

    alone = [batched.complete(p, LINE).text for p in PROMPTS]
    monkeypatch.setattr(batched.model, "generate", generate_with_little_memory)
    monkeypatch.setattr(batched, "max_batch", 8)
    splits = batched.oom_splits
    gate = threading.Barrier(len(PROMPTS))

    def call(prompt):
        gate.wait()  # all four arrive together, so the first batch holds more than two
        return batched.complete(prompt, LINE).text

    with ThreadPoolExecutor(len(PROMPTS)) as pool:
        together = list(pool.map(call, PROMPTS))
    assert together == alone
    assert max(sizes) > 2 and batched.oom_splits > splits and batched.max_batch <= 2


def test_unsupported_requests_are_clear_errors(batched):
    with pytest.raises(LLMError, match="no constrained decoding"):
        batched.complete(PROMPTS[0], Sampling(json_schema={"type": "object"}))
    if not torch.cuda.is_available():
        with pytest.raises(LLMError, match="no CUDA device"):
            make_backend(LLMConfig(backend="torch", model="smollm2-135m", device="cuda"))


def test_repeat_penalty_sees_generated_tokens_only():
    """llama.cpp penalises what it generated, not the prompt (the item's own words)."""
    prompt_width = 3
    penalty = recent_repeat_penalty(2.0, prompt_width)
    scores = torch.tensor([[4.0, -4.0, 4.0, 4.0, 4.0]])
    prompt_only = torch.tensor([[0, 1, 2]])
    assert torch.equal(penalty(prompt_only, scores.clone()), scores)
    generated = torch.tensor([[0, 1, 2, 1, 3]])
    assert penalty(generated, scores.clone()).tolist() == [[4.0, -8.0, 4.0, 2.0, 4.0]]


def test_the_job_runs_on_the_torch_backend_with_the_embedded_cache_keys(batched, tmp_path):
    folder = synthetic.generate(tmp_path / "synthetic", n_items=30, n_users=40)
    items = load_dataset(folder, name="synthetic").items
    torch_cfg = MakrConfig(llm=LLMConfig(backend="torch", model="smollm2-135m"), limit=2)
    job = MakrRun(items, tmp_path / "makr", torch_cfg, backend=batched)
    report = job.run()
    assert report.generated == 2 and report.completion_tokens > 0
    for line in (tmp_path / "makr" / "knowledge.jsonl").read_text().splitlines():
        KnowledgeRecord.model_validate_json(line)
    # the embedded backend finds those items cached: the same keys, nothing generated
    embedded_cfg = MakrConfig(llm=LLMConfig(model="smollm2-135m"), limit=2, generate=False)
    again = MakrRun(items, tmp_path / "makr", embedded_cfg).run()
    assert (again.from_cache, again.generated, again.without_record) == (2, 0, 0)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal without a GPU")
def test_cli_torch_on_cuda_without_a_gpu_is_one_clear_line(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "reaseq.cli", "makr", "run", "synthetic", "--backend", "torch",
         "--device", "cuda", "--model", "smollm2-135m", "--limit", "1",
         "--artifacts", str(tmp_path)],
        capture_output=True,
        text=True,
        env=os.environ | {"COLUMNS": "200"},
    )  # fmt: skip
    assert out.returncode == 2, out.stderr
    assert "no CUDA device is visible" in out.stderr and "Traceback" not in out.stderr


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_batches_on_cuda_answer_like_the_cpu(batched):
    gpu = make_backend(LLMConfig(backend="torch", model="smollm2-135m", device="cuda"))
    assert gpu.device == "cuda"
    with ThreadPoolExecutor(len(PROMPTS)) as pool:
        answers = list(pool.map(lambda p: gpu.complete(p, LINE).text, PROMPTS))
    cpu = [batched.complete(p, LINE).text for p in PROMPTS]
    assert sum(a == b for a, b in zip(answers, cpu, strict=True)) >= 3  # bf16 on the GPU
