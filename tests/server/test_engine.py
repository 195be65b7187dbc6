"""The engine over a fake runner (no model): admission, cancellation, stop strings and
streaming deltas, deadlines, and a failing step that fails only its batch's requests.

`FakeRunner` follows the `server.engine.interface.Runner` protocol: each sequence
"decodes" its prompt's tokens over and over, one token per step, so outputs are known in
advance and the tiny byte-level tokenizer turns them into text."""

from __future__ import annotations

import threading
import time

import pytest

from latent_ops.program import Generate, SamplingParams
from server.engine.engine import Engine
from server.engine.interface import CancelledError, Delta, Done, Failed, QueueFull, RequestStats
from server.engine.runner import Sequence


class FakeRunner:
    def __init__(self, eos: int, max_batch_size: int = 8, delay: float = 0.002):
        self.eos_token_ids = {eos}
        self.max_model_len = 10_000
        self.device = "cpu"
        self.lm_head = None
        self.lora = None
        self.healthy = True
        self.max_batch_size = max_batch_size
        self.delay = delay
        self.waiting: list[Sequence] = []
        self.batch: list[Sequence] = []
        self.paused = False  # admit nothing, decode nothing
        self.fail_next = False  # the next step with a batch raises
        self.steps = 0

    @property
    def running(self) -> list[Sequence]:
        return [s for s in self.batch if not s.finished]

    @property
    def has_work(self) -> bool:
        return bool(self.waiting or self.batch)

    def add(self, seq: Sequence) -> None:  # admission order as ModelRunner's
        self.waiting.append(seq)
        self.waiting.sort(key=lambda s: (s.priority, s.seq_id))

    def abort(self, seq: Sequence) -> None:
        if seq.finish_reason is None:
            seq.finish_reason = "abort"
        if seq in self.waiting:
            self.waiting.remove(seq)

    def finish(self, seq: Sequence, reason: str = "stop") -> None:
        if seq.finish_reason is None:
            seq.finish_reason = reason

    def complete(self, seqs) -> None:
        pass

    def release(self, cache_key) -> None:
        pass

    def reset(self) -> None:
        for seq in self.running:
            self.abort(seq)
        self.batch = []

    def shutdown(self) -> None:
        pass

    def step(self) -> list[Sequence]:
        time.sleep(self.delay)
        if self.paused:
            return []
        self.steps += 1
        self.batch = [s for s in self.batch if not s.finished]
        if self.fail_next and self.batch:
            self.fail_next = False
            raise RuntimeError("the forward pass failed")
        free = self.max_batch_size - len(self.batch)
        admitted, self.waiting = self.waiting[:free], self.waiting[free:]
        self.batch += admitted
        for seq in self.batch:
            self._decode(seq)
        return list(self.batch)

    def _decode(self, seq: Sequence) -> None:
        source = seq.prompt_ids
        token = source[len(seq.output_ids) % len(source)]
        seq.output_ids.append(token)
        p = seq.params
        if (token in self.eos_token_ids and not p.ignore_eos) or token in p.stop_token_ids:
            seq.finish_reason = "stop"
        elif len(seq.output_ids) >= p.max_tokens:
            seq.finish_reason = "length"


class Client:
    """One submitted request: its events, and a wait for the end."""

    def __init__(self, engine: Engine, rid: str, need: Generate, method: str = "none"):
        self.events: list = []
        self.ended = threading.Event()

        def program():
            [generation] = yield [need]
            return generation

        engine.submit(rid, program(), self._sink, RequestStats(request_id=rid, method=method))

    def _sink(self, event) -> None:
        self.events.append(event)
        if isinstance(event, (Done, Failed)):
            self.ended.set()

    def result(self, timeout: float = 10.0):
        assert self.ended.wait(timeout), "the request did not end"
        return self.events[-1]

    @property
    def streamed(self) -> str:
        return "".join(e.text for e in self.events if isinstance(e, Delta))


@pytest.fixture
def runner(tok):
    return FakeRunner(eos=tok.eos_token_id)


@pytest.fixture
def engine(runner, tok):
    engine = Engine(runner, tok, max_queued_requests=2)
    engine.start()
    yield engine
    engine.shutdown()


def _need(tok, text, max_tokens=50, stream=None, **params):
    ids = tok.encode(text)
    return Generate(ids, SamplingParams(max_tokens=max_tokens, **params), stream_index=stream)


def test_a_request_decodes_to_its_text(engine, tok):
    done = Client(engine, "a", _need(tok, "hello", max_tokens=8)).result()
    assert isinstance(done, Done)
    assert done.output.text == "hellohel" and done.output.finish_reason == "length"
    assert engine.alive and engine.num_waiting == 0


def test_admission_refuses_beyond_the_queue_limit(engine, runner, tok):
    runner.paused = True
    first = Client(engine, "a", _need(tok, "one", max_tokens=3))
    second = Client(engine, "b", _need(tok, "two", max_tokens=3))
    assert engine.num_waiting == 2
    with pytest.raises(QueueFull):
        Client(engine, "c", _need(tok, "three", max_tokens=3))
    runner.paused = False
    assert first.result().output.text == "one"
    assert second.result().output.text == "two"
    third = Client(engine, "c", _need(tok, "three", max_tokens=3))  # room again
    assert third.result().output.text == "thr"


def test_cancellation_ends_the_request_and_drops_its_sequence(engine, runner, tok):
    client = Client(engine, "a", _need(tok, "abc", max_tokens=100_000, stream=0))
    deadline = time.monotonic() + 5
    while not client.streamed and time.monotonic() < deadline:
        time.sleep(0.005)
    engine.cancel("a")
    event = client.result()
    assert isinstance(event, Failed) and isinstance(event.error, CancelledError)
    time.sleep(0.05)
    assert runner.running == [] and runner.waiting == []
    assert Client(engine, "b", _need(tok, "ok", max_tokens=2)).result().output.text == "ok"


def test_stop_strings_cut_the_text_and_the_stream(engine, tok):
    client = Client(engine, "a", _need(tok, "say 中文 then STOP now", stream=0, stop=["STOP"]))
    done = client.result()
    assert done.output.text == "say 中文 then " and done.output.finish_reason == "stop"
    deltas = [e.text for e in client.events if isinstance(e, Delta)]
    assert "".join(deltas) == "say 中文 then "
    assert all("\ufffd" not in d for d in deltas)  # no half of a character is streamed
    assert not any("S" in d for d in deltas)  # a possible stop string's start is held back


def test_a_deadline_ends_decoding(engine, tok):
    need = _need(tok, "xy", max_tokens=100_000, deadline=time.monotonic() + 0.1)
    done = Client(engine, "a", need).result()
    assert isinstance(done, Done) and done.output.finish_reason == "deadline"
    assert 0 < len(done.output.token_ids) < 100_000


def test_a_failing_step_fails_only_its_batch(tok):
    runner = FakeRunner(eos=tok.eos_token_id, max_batch_size=2)
    engine = Engine(runner, tok, max_queued_requests=8)
    engine.start()
    try:
        runner.paused = True
        a = Client(engine, "a", _need(tok, "aaa", max_tokens=1000))
        b = Client(engine, "b", _need(tok, "bbb", max_tokens=1000))
        c = Client(engine, "c", _need(tok, "ccc", max_tokens=5))  # waits: the batch is full
        time.sleep(0.05)  # all three are in the runner's queue
        runner.fail_next = True
        runner.paused = False
        for victim in (a, b):
            event = victim.result()
            assert isinstance(event, Failed) and "forward pass failed" in str(event.error)
        assert c.result().output.text == "ccccc"
        assert engine.alive
        assert Client(engine, "d", _need(tok, "dd", max_tokens=2)).result().output.text == "dd"
    finally:
        engine.shutdown()


def test_build_engine_takes_an_engine_config_and_overrides(tiny_loaded):
    from server.config import ServerConfig
    from server.engine.build import EngineConfig, build_engine

    engine = build_engine(tiny_loaded, EngineConfig(max_batch_size=3), max_queued_requests=5)
    assert engine.runner.max_batch_size == 3
    assert engine.max_queued_requests == 5
    assert engine.runner.max_model_len <= tiny_loaded.model.config.max_position_embeddings
    cfg = EngineConfig.from_server(ServerConfig(model="x", max_batch_size=2))
    assert (cfg.max_batch_size, cfg.backend) == (2, "hf")
    with pytest.raises(TypeError):
        build_engine(tiny_loaded, max_batch=4)  # not a setting


@pytest.mark.parametrize("yield_s, first", [(30.0, "plain"), (0.0, "refined")])
def test_refining_requests_yield_batch_slots_to_plain_ones(runner, tok, yield_s, first):
    engine = Engine(runner, tok, refinement_yield_s=yield_s)
    runner.paused = True
    engine.start()
    try:
        refined = Client(engine, "refined", _need(tok, "slow"), method="latentseek")
        time.sleep(0.05)  # the refined request arrives first
        plain = Client(engine, "plain", _need(tok, "fast"))
        deadline = time.monotonic() + 5
        while len(runner.waiting) < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        order = [
            "plain" if s.prompt_ids == tok.encode("fast") else "refined" for s in runner.waiting
        ]
        assert order[0] == first
        runner.paused = False
        assert isinstance(refined.result(), Done) and isinstance(plain.result(), Done)
    finally:
        engine.shutdown()
